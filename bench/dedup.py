"""Near-duplicate removal, side by side in one run: the curate stage's dedup path (datatrove exact +
MinHash blocks, as dataengine runs them) vs datasketch's MinHashLSH, on the same planted corpus.

    .venv/bin/python bench/dedup.py [--distinct 40000] [--exact 5000] [--near 5000]

Reports documents/second and precision / recall / F1 of the removed set against the planted truth
(a removal is right when exactly one document of each original + copies group is kept, whichever).
`dataengine` runs every datatrove step as one task; `dataengine_w2` splits the input in two shards
and runs two workers, as `curate: {tasks: 2, workers: 2}` does. datasketch's LSH is one process.
Both use 5-word shingles and 14 bands x 8 rows (datasketch: num_perm=112 with those b, r).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.planted_corpus import planted_corpus, removal_scores  # noqa: E402

BANDS, ROWS, NGRAM = 14, 8, 5


def run_dataengine(docs: list[tuple[str, str]], work: Path, workers: int = 1) -> set[str]:
    from dataengine.curate.dedup import dedup_language
    from dataengine.executors import pipeline_runner
    from dataengine.logs import datatrove_logs_to
    from dataengine.recipe import DedupConfig, ExecutorSettings

    src = work / "in"
    src.mkdir(parents=True)
    for shard in range(workers):  # as the filter step leaves them with `curate.tasks` = workers
        with open(src / f"{shard:05d}.jsonl", "wb") as fh:
            for doc_id, text in docs[shard::workers]:
                fh.write(orjson.dumps({"text": text, "id": doc_id, "metadata": {"language": "en"}}) + b"\n")
    cfg = DedupConfig(minhash={"n_grams": NGRAM, "num_buckets": BANDS, "hashes_per_bucket": ROWS})
    with datatrove_logs_to(work / "datatrove.log"):
        run = pipeline_runner(ExecutorSettings(workers=workers), work / "logs")
        dedup_language("en", src, work / "dedup", work / "rejected", work / "out", cfg, run)
    return {
        orjson.loads(line)["id"] for p in (work / "rejected").glob("*.jsonl") for line in p.read_bytes().splitlines()
    }


def run_datasketch(docs: list[tuple[str, str]]) -> set[str]:
    """The usual datasketch recipe: query the LSH before inserting; a hit means the doc is a duplicate."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(num_perm=BANDS * ROWS, params=(BANDS, ROWS))
    removed = set()
    for doc_id, text in docs:
        words = re.findall(r"\w+", text.lower())
        shingles = {" ".join(words[i : i + NGRAM]).encode() for i in range(max(1, len(words) - NGRAM + 1))}
        m = MinHash(num_perm=BANDS * ROWS)
        m.update_batch(shingles)
        if lsh.query(m):
            removed.add(doc_id)
        else:
            lsh.insert(doc_id, m)
    return removed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--distinct", type=int, default=40_000)
    parser.add_argument("--exact", type=int, default=5_000)
    parser.add_argument("--near", type=int, default=5_000)
    parser.add_argument("--edits", type=int, default=2, help="word substitutions per near-copy (120-word docs)")
    args = parser.parse_args()
    planted = planted_corpus(args.distinct, args.exact, args.near, edits=args.edits)
    n = len(planted.docs)
    print(f"corpus: {n} docs ({args.distinct} distinct, {args.exact} exact copies, {args.near} near copies)")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        contenders = {
            "dataengine": lambda: run_dataengine(planted.docs, Path(tmp) / "w1"),
            "dataengine_w2": lambda: run_dataengine(planted.docs, Path(tmp) / "w2", workers=2),
            "datasketch": lambda: run_datasketch(planted.docs),
        }
        for name, fn in contenders.items():
            started = time.perf_counter()
            removed = fn()
            seconds = time.perf_counter() - started
            results[name] = {"seconds": seconds, "docs_per_s": n / seconds, **removal_scores(removed, planted)}
            r = results[name]
            print(
                f"{name:>14}: {seconds:7.1f} s  {r['docs_per_s']:8.0f} docs/s  "
                f"P {r['precision']:.4f}  R {r['recall']:.4f}  F1 {r['f1']:.4f}",
                flush=True,
            )
    for name in ("dataengine", "dataengine_w2"):
        ratio = results[name]["docs_per_s"] / results["datasketch"]["docs_per_s"]
        print(f"throughput {name} / datasketch: {ratio:.2f}x")


if __name__ == "__main__":
    main()
