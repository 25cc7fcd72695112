"""How curation and publishing grow with the number of rows: rows/s and peak memory of curate (filters, exact
and MinHash dedup) then an appending publish, on synthetic curated-looking rows made here (no teacher), at
several sizes side by side.

    .venv/bin/python bench/rows.py [--sizes 10000,100000]

Each size runs in its own process (`run_recipe` with only curate and publish, as an incremental run does);
the parent reads that process's peak RSS. The rows are made and written a batch at a time, so making them
adds nothing that grows with their number. 5% of the answers copy a recent one in capitals, so dedup has
work. The language and prose-quality filters are off: the answers are word salad. So is the repetition filter:
datatrove's Gopher repetition rules split words with spaCy, ~2 ms a row here (105 of 142 s at 50,000 rows),
a cost per row that does not grow with the run and would make the 1,000,000-row point take most of an hour.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

RECIPE = """
name: rows
pipeline: curate
teacher: {model: "builtin:smollm2-moe"}
generate:
  chat: {languages: [{code: en, quota: 8}]}
curate:
  filters:
    language: {enabled: false}
    prose_quality: {enabled: false}
    question: {enabled: false}
    repetition: {enabled: false}
  code: {enabled: false}
  decontamination: {enabled: false}
publish:
  to: published
  append: true
"""


def make_rows(n: int, seed: int = 0) -> Iterator[dict]:
    """`n` rows, one at a time (a million would not fit in memory as dicts): 5% copy one of the last 1,000
    answers, in capitals."""
    rng = random.Random(seed)
    vocab = [
        "".join(rng.choice("bcdfghjklmnprstvwz") + rng.choice("aeiou") for _ in range(rng.randint(1, 4)))
        for _ in range(20000)
    ]
    recent: deque[str] = deque(maxlen=1000)
    for i in range(n):
        if recent and rng.random() < 0.05:
            answer = rng.choice(recent).upper()
        else:
            answer = " ".join(rng.choice(vocab) for _ in range(rng.randint(60, 160))) + "."
            recent.append(answer)
        yield {
            "id": f"r{i:08d}",
            "kind": "chat",
            "language": "en",
            "seed": i,
            "finish_reason": "stop",
            "teacher_model": "builtin:smollm2-moe",
            "messages": [
                {"role": "user", "content": f"Tell me about item {i}."},
                {"role": "assistant", "content": answer},
            ],
        }


def one(n: int, folder: Path) -> dict:
    from rich.console import Console

    from dataengine.manifest import Manifest
    from dataengine.recipe import parse_recipe
    from dataengine.rows import SAMPLE_FEATURES, write_shards
    from dataengine.runner import run_recipe

    run_dir = folder / "run"
    write_shards(make_rows(n), run_dir / "generated", features=SAMPLE_FEATURES)
    Manifest(
        stage="generate",
        config_hash="g",
        input_fingerprint="",
        output_fingerprint=str(n),
        rows_in=None,
        rows_out=n,
        drops={},
        stats={},
        timings={},
        run_id="rows-bench",
        recipe_hash="r",
        versions={},
    ).write(run_dir / "generated")
    (run_dir / "run.json").write_text(json.dumps({"run_id": "rows-bench", "created_at": "2026-11-24T00:00"}))
    recipe = parse_recipe(RECIPE, base_dir=folder)
    started = time.perf_counter()
    manifests = run_recipe(
        recipe, folder, run_dir=run_dir, only=["curate", "publish"], console=Console(quiet=True, width=200)
    )
    return {
        "seconds": time.perf_counter() - started,
        "kept": manifests["curate"].rows_out,
        "published": manifests["publish"].stats["rows_total"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, Path(args.folder))))
        return
    print(f"{'rows':>10}{'kept':>10}{'seconds':>10}{'rows/s':>10}{'peak RSS MB':>13}")
    for n in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="bench-rows-") as folder:
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            done = subprocess.run(
                [sys.executable, __file__, "--one", str(n), "--folder", folder], capture_output=True, text=True
            )
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KB: the largest child so far
            if done.returncode != 0:
                print(f"{n:>10} failed: {done.stderr[-1500:]}")
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            rss = f"{peak / 1024:.0f}" if peak > before else f"<= {before / 1024:.0f}"
            print(f"{n:>10}{result['kept']:>10}{result['seconds']:>10.1f}{n / result['seconds']:>10.0f}{rss:>13}")


if __name__ == "__main__":
    main()
