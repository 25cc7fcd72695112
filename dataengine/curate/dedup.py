"""Exact then MinHash dedup of one language's rows, with datatrove's own dedup blocks.

Each language is deduplicated on its own (rows in different languages are not near-copies of each
other), with that language's word tokenizer for MinHash shingles. The text compared is prompt +
answer, as the filter step writes it.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import replace
from pathlib import Path

import numpy as np
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
from datatrove.pipeline.dedup.minhash import _mersenne_prime
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.readers import JsonlReader, ParquetReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.hashing import HashConfig
from datatrove.utils.text import ngrams, simplify_text
from datatrove.utils.word_tokenizers import WordTokenizer, load_word_tokenizer

from dataengine.checks.scripts import UNSPACED
from dataengine.executors import RunPipeline
from dataengine.recipe import DedupConfig, MinhashSettings
from dataengine.rows import last_user_turn, primary_language


def normalised_text(doc: Document) -> bytes:
    r"""Exact-dedup key: case and whitespace do not make two samples different. Bytes, because
    datatrove's default (xxhash) hash function only takes bytes. `" ".join(split())` is
    `re.sub(r"\s+", " ", text).strip()` (both split on str.isspace) at a third of the cost."""
    return " ".join(doc.text.lower().split()).encode()


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


class _Reordered(Exception):
    """A character whose decomposition holds a mark NFD may reorder against its neighbours' marks."""


class _MarkFree(dict):
    """str.translate table, code point -> that character's NFD without its Mn marks, filled as characters
    are seen. NFD of a text is each character's decomposition, then canonical ordering, which only reorders
    runs of marks (combining class > 0). Dropping the Mn marks afterwards leaves those runs in order, except
    where a run holds two spacing marks (Mc, a few viramas and musical stems, 38 code points in Unicode 14):
    characters bringing one raise _Reordered, and the text takes datatrove's own path."""

    def __missing__(self, code: int) -> str:
        parts = unicodedata.normalize("NFD", chr(code))
        if any(unicodedata.combining(p) and unicodedata.category(p) != "Mn" for p in parts):
            raise _Reordered  # not stored: every text holding it goes the exact way
        self[code] = kept = "".join(p for p in parts if unicodedata.category(p) != "Mn")
        return kept


_MARK_FREE = _MarkFree()


def mod_mersenne61(x: np.ndarray) -> np.ndarray:
    """`x % (2**61 - 1)` for uint64, as datatrove's `get_signature` computes it, without a division per
    element (~35% of the signature's arithmetic, measured): 2**61 = 1 (mod p), so x = hi * 2**61 + lo is
    congruent to r = hi + lo <= p + 7. r - p wraps past r when r < p and is r mod p when r >= p, so the
    smaller of the two is r mod p."""
    r = x & _mersenne_prime
    r += x >> np.uint64(61)
    return np.minimum(r, r - _mersenne_prime, out=r)


class MinhashSignature(MinhashDedupSignature):
    """datatrove's MinHash signature step: the same shingles, hashes and signatures (tests/test_dedup.py
    compares them with datatrove's methods), computed in about half the time. What differs, and the datatrove
    change that would make each override unnecessary:

    - `simplify_text` strips diacritics with `unicodedata.category` per character in a Python generator, ~70%
      of its time, even for ASCII text where NFD and mark-stripping change nothing, and collapses whitespace
      with a regex. Here datatrove's function does case, numbers and punctuation, then `split` collapses
      whitespace, ASCII text is done, and other text drops its marks through a cached per-character table
      (`_MarkFree`). Upstream: `" ".join(text.split())` and `if norm_unicode_diacritics and not
      text.isascii()` in `simplify_text`.
    - its default hash (64-bit xxhash) is handed str shingles, which xxhash 3 refuses ("Strings must be
      encoded before hashing"); shingles are hashed as utf-8 bytes. Upstream: encode before hashing.
    - `get_signature` reduces modulo 2**61 - 1 without a division (`mod_mersenne61`) and cuts bands with a
      reshape rather than np.split. Upstream: the same two lines."""

    def __init__(self, output_folder: str, config: MinhashConfig, language: str | WordTokenizer) -> None:
        super().__init__(output_folder, config, language=language)
        if self.config.hash_config != HashConfig():
            raise ValueError(f"MinhashSignature hashes with 64-bit xxhash only, not {self.config.hash_config}")
        norm = self.config.norm_config
        self._datatrove_steps = replace(norm, norm_whitespace=False, norm_unicode_diacritics=False)

    def simplify(self, text: str) -> str:
        """datatrove's `simplify_text(text, config.norm_config)`."""
        norm = self.config.norm_config
        simple = simplify_text(text, self._datatrove_steps)
        if norm.norm_whitespace:
            simple = " ".join(simple.split())  # = re.sub(r"\s+", " ", simple): both split on str.isspace
        if not norm.norm_unicode_diacritics or simple.isascii():
            return simple
        try:
            return simple.translate(_MARK_FREE).strip()
        except _Reordered:
            return simplify_text(text, norm)

    def get_shingles(self, text: str) -> np.ndarray:
        words = self.word_tokenizer.word_tokenize(self.simplify(text))
        grams = ngrams(words, self.config.n_grams)
        hashes = [xxhash.xxh64_intdigest(" ".join(gram).encode()) for gram in grams]
        return np.fromiter(hashes, dtype=np.uint64, count=len(hashes)).reshape((-1, 1))

    def get_signature(self, shingles: np.ndarray) -> list[list[int]]:
        a, b = self.parameters
        phv = shingles * a
        phv += b
        mins = np.min(mod_mersenne61(phv), axis=0)
        return mins.reshape(self.config.num_buckets, -1).tolist()


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
