"""`dataengine rows` on a big run: seconds to the first page and peak RSS of each query, beside reading the table
whole first (pyarrow's `read_table` over the shards, then the same filter or group-by), the way a notebook does.

    .venv/bin/python bench/rows_query.py [--rows 1000000] [--run DIR]

The run is made by bench/big_run.py (kept in --run when given, else in a temporary folder that is removed).
Every measurement is a process of its own (`/usr/bin/time`'s maximum resident set size), the command as a user
types it; the eager reading is the same question asked of the whole table.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

# (name, `dataengine rows` arguments after the run folder, the same question asked of the whole table in pyarrow)
QUERIES = [
    ("first page", ["curated"], "t = read('curated'); t.slice(0, 20).to_pylist()"),
    (
        "condition",
        ["curated", "--where", "language = 'fr' and kind = 'chat'", "-c", "id,messages"],
        "t = read('curated'); f = t.filter((pc.field('language') == 'fr') & (pc.field('kind') == 'chat'))\n"
        "f.select(['id', 'messages']).slice(0, 20).to_pylist()",
    ),
    (
        "group by",
        ["--sql", "select drop_reason, count(*) as n from rejected group by 1 order by 2 desc"],
        "t = read('rejected'); t.group_by('drop_reason').aggregate([([], 'count_all')]).to_pylist()",
    ),
    (
        "sort",
        ["curated", "--sort", "-dedup_cluster_size,id", "-c", "id,dedup_cluster_size"],
        "t = read('curated'); t.sort_by([('dedup_cluster_size', 'descending'), ('id', 'ascending')]).slice(0, 20)",
    ),
]

EAGER = """
import sys
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pathlib import Path
run = Path(sys.argv[1])
def read(folder):
    return pq.read_table(sorted((run / folder / "data").glob("*.parquet")))
{code}
"""


def _measure(cmd: list[str]) -> tuple[float, float]:
    """Seconds and peak RSS (MB) of one process."""
    started = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{cmd} failed:\n{done.stderr[-2000:]}")
    return seconds, int(done.stderr.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--run", type=Path, help="keep the run here (made if missing)")
    args = parser.parse_args()
    scratch = None if args.run else Path(tempfile.mkdtemp(prefix="rows-query-"))
    run = args.run or scratch / "run"
    try:
        if not run.exists():
            from big_run import make_run

            started = time.perf_counter()
            make_run(run, args.rows)
            print(f"made a {args.rows:,}-row run in {time.perf_counter() - started:.0f} s: {run}", flush=True)
        cli = [sys.executable, "-m", "dataengine.cli", "rows", str(run)]
        print("| query | `dataengine rows` s | its peak RSS | read whole, then ask: s | its peak RSS | time ratio |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, query, code in QUERIES:
            lazy_s, lazy_mb = _measure([*cli, *query])
            eager_s, eager_mb = _measure([sys.executable, "-c", EAGER.format(code=code), str(run)])
            print(
                f"| {name} | {lazy_s:.2f} | {lazy_mb:.0f} MB | {eager_s:.2f} | {eager_mb:.0f} MB | "
                f"{lazy_s / eager_s:.2f}x |",
                flush=True,
            )
        import_s, import_mb = _measure([sys.executable, "-m", "dataengine.cli", "--help"])
        print(f"\n`dataengine --help` alone (the CLI's start): {import_s:.2f} s, {import_mb:.0f} MB")
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
