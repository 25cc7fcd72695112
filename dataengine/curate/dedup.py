"""Exact then MinHash dedup of one language's rows, with datatrove's own dedup blocks.

Each language is deduplicated on its own (rows in different languages are not near-copies of each
other), with that language's word tokenizer for MinHash shingles. The text compared is prompt +
answer, as the filter step writes it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash
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
from datatrove.utils.word_tokenizers import WordTokenizer, load_word_tokenizer

from dataengine.curate.scripts import UNSPACED
from dataengine.executors import RunPipeline
from dataengine.recipe import DedupConfig, MinhashSettings
from dataengine.rows import last_user_turn, primary_language

_SPACE = re.compile(r"\s+")


def normalised_text(doc: Document) -> bytes:
    """Exact-dedup key: case and whitespace do not make two samples different. Bytes, because
    datatrove's default (xxhash) hash function only takes bytes."""
    return _SPACE.sub(" ", doc.text.lower()).strip().encode()


class SpacedWordTokenizer(WordTokenizer):
    """Words of a script that puts spaces between them, by regex. MinHash shingles need only word
    boundaries, and datatrove's spaCy tokenizers spend ~10 ms a document building lexemes
    (measured with bench/dedup.py: 7x slower overall than this)."""

    _WORD = re.compile(r"\w+", re.UNICODE)

    def word_tokenize(self, text: str) -> list[str]:
        return self._WORD.findall(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [s for s in re.split(r"(?<=[.!?])\s+", text) if s]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in self._WORD.finditer(text)]


def word_tokenizer(language: str) -> WordTokenizer:
    """The MinHash word tokenizer for a BCP-47 code: datatrove's segmenter for unspaced scripts,
    a regex for the rest."""
    primary = primary_language(language)
    if primary in UNSPACED:
        try:
            return load_word_tokenizer(primary)
        except ValueError:
            pass
    return SpacedWordTokenizer(primary)


def xxhash64_text(text: str) -> int:
    return xxhash.xxh64_intdigest(text.encode())


class MinhashSignature(MinhashDedupSignature):
    """datatrove's MinHash signature step, with its default 64-bit xxhash given bytes: datatrove hands it
    str shingles, which xxhash 3 refuses ("Strings must be encoded before hashing"). Same hash family
    and precision as the config says, so the bucket and cluster steps read these signatures unchanged."""

    def __init__(self, output_folder: str, config: MinhashConfig, language: str | WordTokenizer) -> None:
        super().__init__(output_folder, config, language=language)
        self._hash_func = xxhash64_text


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
    prompt = last_user_turn(messages)
    text = f"{prompt}\n\n{messages[-1]['content']}"
    return {"text": text, "id": data["id"], "metadata": {"language": data["language"]}}


def reference_languages(folders: list[Path]) -> set[str]:
    """Languages present in the reference data; an index is built only for those."""
    return {
        language
        for folder in folders
        for path in folder.rglob("*.parquet")
        for language in pc.unique(pq.read_table(path, columns=["language"]).column("language")).to_pylist()
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

    @staticmethod
    def shards(folder: str) -> int:
        """One datatrove task per input file, so that the filter step's shards are processed in parallel.
        The steps that read documents back by index (the dedup filters) must use the same count."""
        return max(1, len(list(Path(folder).glob("*.jsonl*"))))

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
        shards = self.shards(source)
        self.step("exact-sigs", [JsonlReader(source), ExactDedupSignature(self.at("exact_sigs"), config)], shards)
        self.step(
            "exact-find",
            [ExactFindDedups(self.at("exact_sigs"), self.at("exact_dups"), config, index_folder=index)],
        )  # noqa: E501
        dedup = ExactDedupFilter(self.at("exact_dups"), config, exclusion_writer=self.excluded("exact_dedup"))
        self.step(
            "exact-filter", [JsonlReader(source), dedup, JsonlWriter(self.at("exact_out"), compression=None)], shards
        )
        return self.at("exact_out")

    def minhash(self, source: str, out: Path, mh: MinhashSettings) -> None:
        config = MinhashConfig(n_grams=mh.n_grams, num_buckets=mh.num_buckets, hashes_per_bucket=mh.hashes_per_bucket)
        tok = word_tokenizer(self.language)
        index = None
        if self.references:
            signature = MinhashSignature(self.at("ref_mh_sigs"), config, language=tok)
            self.step("ref-minhash-sigs", [*self.reference_docs(), signature])
            build = MinhashBuildIndex(self.at("ref_mh_sigs"), self.at("ref_mh_index"), "reference", config=config)
            self.step("ref-minhash-index", [build], mh.num_buckets)  # datatrove: one task per bucket
            index = self.at("ref_mh_index")
        shards = self.shards(source)
        self.step(
            "minhash-sigs", [JsonlReader(source), MinhashSignature(self.at("mh_sigs"), config, language=tok)], shards
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
            self.at("mh_remove"),
            exclusion_writer=self.excluded("near_dedup"),
            load_cluster_ids=True,
            load_cluster_sizes=True,
        )
        self.step("minhash-filter", [JsonlReader(source), dedup, JsonlWriter(str(out), compression=None)], shards)


def dedup_language(
    language: str,
    data: Path,
    work: Path,
    rejected: Path,
    out: Path,
    cfg: DedupConfig,
    run: RunPipeline,
    references: list[Path] = (),
) -> None:
    """data/*.jsonl (one language) -> out/*.jsonl, duplicates to rejected/ with the step in the file name.
    With `references` (parquet folders of earlier data), rows that copy those are removed too: their
    signatures become a datatrove dedup index that the new rows are matched against."""
    steps = _LanguageDedup(language, work, rejected, run, list(references))
    source = steps.exact(str(data)) if cfg.exact else str(data)
    if cfg.minhash.enabled:
        steps.minhash(source, out, cfg.minhash)
    else:
        steps.step("copy", [JsonlReader(source), JsonlWriter(str(out), compression=None)])
