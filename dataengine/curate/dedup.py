"""Exact then MinHash dedup of one language's rows, with datatrove's own dedup blocks.

Each language is deduplicated on its own (rows in different languages are not near-copies of each
other), with that language's word tokenizer for MinHash shingles. The text compared is prompt +
answer, as the filter step writes it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.dedup import (
    ExactDedupConfig,
    ExactDedupFilter,
    ExactDedupSignature,
    ExactFindDedups,
    MinhashBuildIndex,
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.dedup.exact_dedup import ExactDedupBuildIndex
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.readers import JsonlReader, ParquetReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.hashing import HashConfig
from datatrove.utils.word_tokenizers import load_word_tokenizer

from dataengine.recipe import DedupConfig, MinhashSettings

_SPACE = re.compile(r"\s+")

# Runs one datatrove pipeline to completion: (name, steps, tasks) -> None. Supplied by the stage,
# which picks the executor (local or ray) and where logs go.
RunPipeline = Callable[[str, list, int], None]


def normalised_text(doc: Document) -> bytes:
    """Exact-dedup key: case and whitespace do not make two samples different. Bytes, because
    datatrove's default (xxhash) hash function only takes bytes."""
    return _SPACE.sub(" ", doc.text.lower()).strip().encode()


def tokenizer_language(language: str) -> str:
    """datatrove's word tokenizer for a BCP-47 code, English's where it has none."""
    primary = language.split("-")[0]
    try:
        load_word_tokenizer(primary)
        return primary
    except ValueError:
        return "en"


class LanguageIs(BaseFilter):
    name = "🔤 language is"

    def __init__(self, language: str) -> None:
        super().__init__()
        self.language = language

    def filter(self, doc: Document) -> bool:
        return doc.metadata.get("language") == self.language


def reference_document(self, data: dict, path: str, id_in_file: int | str) -> dict:
    """A row of earlier curated or published data, compared on prompt + answer like the new rows."""
    messages = data["messages"]
    prompt = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    text = f"{prompt}\n\n{messages[-1]['content']}"
    return {"text": text, "id": data["id"], "metadata": {"language": data["language"]}}


def reference_languages(folders: list[Path]) -> set[str]:
    """Languages present in the reference data; an index is built only for those."""
    import pyarrow.parquet as pq

    return {
        language
        for folder in folders
        for path in folder.rglob("*.parquet")
        for language in pq.read_table(path, columns=["language"]).column("language").to_pylist()
    }


class _LanguageDedup:
    """Folders and pipelines of one language's dedup; see dedup_language."""

    def __init__(self, language: str, work: Path, rejected: Path, run: RunPipeline, references: list[Path]):
        self.language, self.work, self.rejected, self.run = language, work, rejected, run
        self.references = references if references and language in reference_languages(references) else []

    def at(self, name: str) -> str:
        return str(self.work / name)

    def excluded(self, step: str) -> JsonlWriter:
        name = f"{step}_{self.language}_${{rank}}.jsonl"
        return JsonlWriter(str(self.rejected), output_filename=name, compression=None)

    def step(self, name: str, pipeline: list, tasks: int = 1) -> None:
        self.run(f"{name}-{self.language}", pipeline, tasks)

    def reference_docs(self) -> list:
        readers = [
            ParquetReader(str(r), adapter=reference_document, glob_pattern="**/*.parquet") for r in self.references
        ]
        return [*readers, LanguageIs(self.language)]

    def exact(self, source: str) -> str:
        # only_dedup_in_index=False: rows are deduplicated among themselves as well as against the index
        config = ExactDedupConfig(content_getter=normalised_text, only_dedup_in_index=False)
        index = None
        if self.references:
            self.step(
                "ref-exact-sigs", [*self.reference_docs(), ExactDedupSignature(self.at("ref_exact_sigs"), config)]
            )
            build = ExactDedupBuildIndex(self.at("ref_exact_sigs"), self.at("ref_exact_index"), "reference", config)
            self.step("ref-exact-index", [build])
            index = self.at("ref_exact_index")
        self.step("exact-sigs", [JsonlReader(source), ExactDedupSignature(self.at("exact_sigs"), config)])
        self.step(
            "exact-find",
            [ExactFindDedups(self.at("exact_sigs"), self.at("exact_dups"), config, index_folder=index)],
        )  # noqa: E501
        dedup = ExactDedupFilter(self.at("exact_dups"), config, exclusion_writer=self.excluded("exact_dedup"))
        self.step("exact-filter", [JsonlReader(source), dedup, JsonlWriter(self.at("exact_out"))])
        return self.at("exact_out")

    def minhash(self, source: str, out: Path, mh: MinhashSettings) -> None:
        config = MinhashConfig(
            n_grams=mh.n_grams,
            num_buckets=mh.num_buckets,
            hashes_per_bucket=mh.hashes_per_bucket,
            # datatrove's default xxhash is handed str shingles, which xxhash 3 refuses ("Strings must be
            # encoded before hashing"); its sha1 path encodes them first
            hash_config=HashConfig(precision=64, hash_fc="sha1"),
        )
        tok = tokenizer_language(self.language)
        index = None
        if self.references:
            signature = MinhashDedupSignature(self.at("ref_mh_sigs"), config, language=tok)
            self.step("ref-minhash-sigs", [*self.reference_docs(), signature])
            build = MinhashBuildIndex(self.at("ref_mh_sigs"), self.at("ref_mh_index"), "reference", config=config)
            self.step("ref-minhash-index", [build], mh.num_buckets)  # datatrove: one task per bucket
            index = self.at("ref_mh_index")
        self.step(
            "minhash-sigs", [JsonlReader(source), MinhashDedupSignature(self.at("mh_sigs"), config, language=tok)]
        )
        buckets = MinhashDedupBuckets(
            self.at("mh_sigs"),
            self.at("mh_buckets"),
            index_folder=index,
            config=config,
            only_dedup_in_index=False,
        )
        self.step("minhash-buckets", [buckets], mh.num_buckets)  # datatrove: one task per bucket
        cluster = MinhashDedupCluster(
            self.at("mh_buckets"), self.at("mh_remove"), config, save_cluster_id=True, save_cluster_size=True
        )
        self.step("minhash-cluster", [cluster])
        dedup = MinhashDedupFilter(
            self.at("mh_remove"), exclusion_writer=self.excluded("near_dedup"), load_cluster_ids=True,
            load_cluster_sizes=True,
        )  # fmt: skip
        self.step("minhash-filter", [JsonlReader(source), dedup, JsonlWriter(str(out))])


def dedup_language(language: str, data: Path, work: Path, rejected: Path, out: Path, cfg: DedupConfig,
                   run: RunPipeline, references: list[Path] = ()) -> None:  # fmt: skip
    """data/*.jsonl (one language) -> out/*.jsonl, duplicates to rejected/ with the step in the file name.
    With `references` (parquet folders of earlier data), rows that copy those are removed too: their
    signatures become a datatrove dedup index that the new rows are matched against."""
    steps = _LanguageDedup(language, work, rejected, run, list(references))
    source = steps.exact(str(data)) if cfg.exact else str(data)
    if cfg.minhash.enabled:
        steps.minhash(source, out, cfg.minhash)
    else:
        steps.step("copy", [JsonlReader(source), JsonlWriter(str(out))])
