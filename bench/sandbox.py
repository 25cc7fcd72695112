"""Sandbox cost, side by side in one run: a benign code row (solution + its unit tests) run through
`run_python` inside the bwrap boundary, with only the fallback layers (no bwrap), and as the sandbox
ran before the boundary existed (`unshare -n` + `setpriv`, the virtualenv's interpreter with its
site-packages, same audit hook and rlimits).

    .venv/bin/python bench/sandbox.py [--runs 40]

The three are interleaved run by run, so load on the machine hits them alike. Reports the median and
mean wall time per run and each one's ratio to the pre-boundary sandbox.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dataengine.checks import sandbox  # noqa: E402

BENIGN = """
def merge_intervals(intervals):
    out = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return out


import unittest


class TestMerge(unittest.TestCase):
    def test_overlap(self):
        self.assertEqual(merge_intervals([(1, 3), (2, 6), (8, 10)]), [[1, 6], [8, 10]])

    def test_empty(self):
        self.assertEqual(merge_intervals([]), [])


unittest.main(argv=["tests"], exit=False)
"""


def boundary() -> float:
    return _timed(lambda: sandbox.run_python(BENIGN))


def fallback() -> float:
    real = sandbox.bwrap_problem
    sandbox.bwrap_problem = lambda: "off for the benchmark"
    try:
        return _timed(lambda: sandbox.run_python(BENIGN))
    finally:
        sandbox.bwrap_problem = real


def before_boundary() -> float:
    """The command the sandbox ran before bwrap: same preamble, limits and output handling."""
    limits = sandbox.SandboxLimits()
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "main.py"
        script.write_text(BENIGN)
        cmd = [
            *sandbox.network_isolation(),
            *sandbox._drop_privileges(),
            sys.executable,
            "-I",
            "-c",
            sandbox._PREAMBLE,
            str(script),
        ]
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
        Path(tmp).chmod(0o777)
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=sandbox._limit(limits),
        )
        output, _ = sandbox._read_capped(proc, limits, time.monotonic())
        seconds = time.perf_counter() - started
    assert proc.returncode == 0 and b"OK" in output, output
    return seconds


def _timed(run) -> float:
    started = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - started
    assert result.passed and "OK" in result.output, result
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    if (problem := sandbox.bwrap_problem()) is not None:
        sys.exit(f"the boundary cannot run here: {problem}")
    contenders = {
        "bwrap boundary": boundary,
        "fallback layers (no bwrap)": fallback,
        "before the boundary": before_boundary,
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for run in contenders.values():
        run()  # warm the page cache
    for _ in range(args.runs):
        for name, run in contenders.items():
            times[name].append(run())
    base = statistics.median(times["before the boundary"])
    print(f"{args.runs} runs each, interleaved\n")
    print("| contender | median ms | mean ms | vs before the boundary (median) |")
    print("|---|---:|---:|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median * 1000:.1f} | {statistics.mean(values) * 1000:.1f} | {median / base:.2f}x |")


if __name__ == "__main__":
    main()
