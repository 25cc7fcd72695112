"""Every aggregate over a run's rows, before and after polars counted them (rows/queries.py): seconds and peak RSS of
`dataengine status RUN` and of writing the run's report (`report.page.write_report`) on a big run, the code of two
checkouts side by side in one run.

    git worktree add /tmp/wt-before 70bf5e8
    .venv/bin/python bench/aggregates.py --before /tmp/wt-before [--rows 1000000] [--repeat 3] [--run DIR]
    git worktree remove --force /tmp/wt-before

The run is made by bench/big_run.py (kept in --run when given, else in a temporary folder that is removed). Each
measurement is a process of its own, started with the checkout first on PYTHONPATH (--before, or --after: this
checkout by default) and timed from start to exit, imports included, as a user waits for it; its peak RSS is its
own (`os.wait4`). The two checkouts take turns, --repeat times, and the fastest of each is shown (the machine may be
shared); the peak RSS is the largest. The status each prints must be the same, or the bench says so.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

COMMANDS = {
    "dataengine status": ["-m", "dataengine.cli", "status"],
    "write the report": [
        "-c",
        "import sys, pathlib, dataengine.report.page as p; p.write_report(pathlib.Path(sys.argv[1]))",
    ],
}


def measure(checkout: Path, args: list[str], run: Path) -> tuple[float, float, str]:
    """(seconds, peak RSS in MB, what it printed) of one process running `args` on `run` with `checkout`'s code."""
    # run from the run's folder: `python -m` puts the working directory first on sys.path, and the checkout must win
    env = {**os.environ, "PYTHONPATH": str(checkout), "COLUMNS": "160"}
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, *args, str(run)], cwd=run.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    with process.stdout:
        out = process.stdout.read().decode()
    _, status, usage = os.wait4(process.pid, 0)  # this process's own peak, where RUSAGE_CHILDREN holds the largest yet
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        sys.exit(f"{checkout}: {' '.join(args)} failed ({process.returncode}):\n{out[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, out


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def compare(before: Path, after: Path, run: Path, repeat: int) -> None:
    print("| command | before s | after s | time ratio | before peak RSS MB | after peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, args in COMMANDS.items():
        best = {"before": (float("inf"), 0.0), "after": (float("inf"), 0.0)}
        printed = {}
        for _ in range(repeat):
            for label, checkout in (("before", before), ("after", after)):
                seconds, mb, printed[label] = measure(checkout, args, run)
                best[label] = (min(best[label][0], seconds), max(best[label][1], mb))
        (b_s, b_mb), (a_s, a_mb) = best["before"], best["after"]
        print(f"| {name} | {b_s:.2f} | {a_s:.2f} | {a_s / b_s:.2f} | {b_mb:.0f} | {a_mb:.0f} |", flush=True)
        if printed["before"] != printed["after"]:
            print(f"\n{name} printed something else after:\n--- before\n{printed['before']}")
            print(f"--- after\n{printed['after']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="a checkout of the code before (a git worktree)")
    parser.add_argument("--after", type=Path, default=ROOT, help="a checkout of the code after (default: this one)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--run", type=Path, help="keep the run here (made if missing)")
    args = parser.parse_args()
    scratch = None if args.run else Path(tempfile.mkdtemp(prefix="aggregates-"))
    run = (args.run or scratch / "run").resolve()
    try:
        if not run.exists():
            from big_run import make_run

            started = time.perf_counter()
            make_run(run, args.rows)
            print(f"made a {args.rows:,}-row run in {time.perf_counter() - started:.0f} s: {run}", flush=True)
        print(f"{machine()}; before {args.before}, after {args.after}; fastest of {args.repeat}\n")
        compare(args.before.resolve(), args.after.resolve(), run, args.repeat)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
