"""How `rows.sorted_rows` (generation's, the judge's and route's external sort) grows with the rows it sorts:
seconds and peak memory for rows of ~3 KB (a generated chat row) and of ~150 KB (a row carrying the teacher's
routing of a ~300-token Qwen3-30B-A3B answer: 48 layers x top-8 experts a token, base64), at two counts each.

    .venv/bin/python bench/sort.py [--points 3000:100000,3000:300000,150000:2000,150000:8000]

Each point (row bytes:rows) runs in its own process; the parent reads that process's peak RSS. The rows are
made one at a time in shuffled id order (random base64, which parquet cannot compress away), sorted by id, and
checked to come out in order. Peak memory should stay flat as the count grows: runs spill at SPILL_ROWS rows
or SPILL_BYTES of arrow, whichever comes first, and the merge holds one ~512 KB row group of each run.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def make_rows(size: int, n: int) -> Iterator[dict]:
    order = list(range(n))
    random.Random(0).shuffle(order)
    for i in order:
        yield {"id": f"r{i:08d}", "teacher_routing": base64.b64encode(os.urandom(size * 3 // 4)).decode()}


def one(size: int, n: int, folder: Path) -> dict:
    from datasets import Features, Value

    from dataengine.rows import sorted_rows

    features = Features({"id": Value("string"), "teacher_routing": Value("string")})
    started, last, count = time.perf_counter(), "", 0
    for row in sorted_rows(make_rows(size, n), ["id"], features, folder / "spill"):
        if row["id"] <= last:
            raise AssertionError(f"out of order: {row['id']} after {last}")
        last, count = row["id"], count + 1
    if count != n:
        raise AssertionError(f"{count} rows out of {n}")
    return {"seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", default="3000:100000,3000:300000,150000:2000,150000:8000")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        size, n = (int(x) for x in args.one.split(":"))
        print(json.dumps(one(size, n, Path(args.folder))))
        return
    print(f"{'row bytes':>10}{'rows':>10}{'data MB':>10}{'seconds':>10}{'rows/s':>10}{'peak RSS MB':>13}")
    for point in args.points.split(","):
        size, n = (int(x) for x in point.split(":"))
        with tempfile.TemporaryDirectory(prefix="bench-sort-") as folder, open(Path(folder) / "err", "w+") as err:
            # each point in its own process, reaped with wait4 for its own peak (RUSAGE_CHILDREN keeps the
            # largest child so far)
            child = subprocess.Popen(
                [sys.executable, __file__, "--one", point, "--folder", folder],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
            out = child.stdout.read()
            _, status, usage = os.wait4(child.pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                err.seek(0)
                print(f"{size:>10}{n:>10} failed: {err.read()[-1500:]}")
                continue
            peak = usage.ru_maxrss  # KB
            seconds = json.loads(out.strip().splitlines()[-1])["seconds"]
            print(f"{size:>10}{n:>10}{size * n / 1e6:>10.0f}{seconds:>10.1f}{n / seconds:>10.0f}{peak / 1024:>13.0f}")


if __name__ == "__main__":
    main()
