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
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.hashing import HashConfig
from datatrove.utils.word_tokenizers import load_word_tokenizer

from dataengine.recipe import DedupConfig

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


def dedup_language(language: str, data: Path, work: Path, rejected: Path, out: Path, cfg: DedupConfig,
                   run: RunPipeline) -> None:  # fmt: skip
    """data/*.jsonl (one language) -> out/*.jsonl, duplicates to rejected/ with the step in the file name."""

    def excluded(step: str) -> JsonlWriter:
        return JsonlWriter(str(rejected), output_filename=f"{step}_{language}_${{rank}}.jsonl", compression=None)

    def folder(name: str) -> str:
        return str(work / name)

    source = str(data)
    if cfg.exact:
        exact = ExactDedupConfig(content_getter=normalised_text)
        run(f"exact-sigs-{language}", [JsonlReader(source), ExactDedupSignature(folder("exact_sigs"), exact)], 1)
        run(f"exact-find-{language}", [ExactFindDedups(folder("exact_sigs"), folder("exact_dups"), exact)], 1)
        dedup = ExactDedupFilter(folder("exact_dups"), exact, exclusion_writer=excluded("exact_dedup"))
        run(f"exact-filter-{language}", [JsonlReader(source), dedup, JsonlWriter(folder("exact_out"))], 1)
        source = folder("exact_out")
    mh = cfg.minhash
    if not mh.enabled:
        run(f"copy-{language}", [JsonlReader(source), JsonlWriter(str(out))], 1)
        return
    config = MinhashConfig(
        n_grams=mh.n_grams,
        num_buckets=mh.num_buckets,
        hashes_per_bucket=mh.hashes_per_bucket,
        # datatrove's default xxhash is handed str shingles, which xxhash 3 refuses ("Strings must be
        # encoded before hashing"); its sha1 path encodes them first
        hash_config=HashConfig(precision=64, hash_fc="sha1"),
    )
    signature = MinhashDedupSignature(folder("mh_sigs"), config, language=tokenizer_language(language))
    run(f"minhash-sigs-{language}", [JsonlReader(source), signature], 1)
    buckets = MinhashDedupBuckets(folder("mh_sigs"), folder("mh_buckets"), config=config)
    run(f"minhash-buckets-{language}", [buckets], mh.num_buckets)  # datatrove: one task per bucket
    cluster = MinhashDedupCluster(
        folder("mh_buckets"), folder("mh_remove"), config, save_cluster_id=True, save_cluster_size=True
    )
    run(f"minhash-cluster-{language}", [cluster], 1)
    dedup = MinhashDedupFilter(
        folder("mh_remove"), exclusion_writer=excluded("near_dedup"), load_cluster_ids=True, load_cluster_sizes=True
    )
    run(f"minhash-filter-{language}", [JsonlReader(source), dedup, JsonlWriter(str(out))], 1)
