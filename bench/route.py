"""Routing replay against teacher scoring on the same rows, side by side in one run: the route stage
(prompt + answer through the teacher in transformers, every router hooked) and the score stage (the
teacher's top-k logprobs from our vLLM server), each over the same rows of a finished run.

    .venv/bin/python bench/route.py [--run runs/quickstart] [--batch-size 8]

Reports seconds per 1,000 answer tokens and peak memory: the route stage runs in its own process (its peak
RSS is all of it); scoring's client runs in this one and its server is vLLM's tree, sampled while it
scores. The server's start is not timed (a run starts it once for generation anyway).
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _recipe(batch_size: int):
    from dataengine.recipe import RouteConfig, load_recipe

    recipe = load_recipe(Path("recipes/quickstart.yaml"))
    return recipe.model_copy(update={"route": RouteConfig(batch_size=batch_size, rejected=False)})


def _ctx(recipe, run_dir: Path, teacher=None):
    from rich.console import Console

    from dataengine.stage import RunContext

    return RunContext(recipe, Path("recipes"), run_dir, Console(file=io.StringIO()), "bench", teacher)


def route_once(run_dir: Path, batch_size: int) -> dict:
    """In its own process: the route stage over run_dir/rows."""
    from dataengine.route.stage import RouteStage

    recipe = _recipe(batch_size)
    stage = RouteStage(recipe, Path("recipes"), rows_from="rows")
    out = run_dir / "routing"
    out.mkdir()
    started = time.perf_counter()
    result = stage.run({"rows": run_dir / "rows"}, {"map": out}, run_dir / ".work" / "route", _ctx(recipe, run_dir))
    return {
        "seconds": time.perf_counter() - started,
        "rows": result.rows_out,
        "answer_tokens": result.stats["answer_tokens"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def score_once(run_dir: Path, batch_size: int) -> dict:
    from dataengine.rows import frames, queries
    from dataengine.score.stage import ScoreStage
    from dataengine.teacher.server import TeacherEndpoint

    recipe = _recipe(batch_size)
    teacher = TeacherEndpoint(recipe.teacher, run_dir / "server.log", log=lambda _: None)
    try:
        teacher.url()  # started before the clock
        server = psutil.Process(teacher.server.process.pid)
        peak, done = [0.0], threading.Event()

        def sample() -> None:
            while not done.is_set():
                tree = [server, *server.children(recursive=True)]
                peak[0] = max(peak[0], sum(p.memory_info().rss for p in tree if p.is_running()) / 2**20)
                done.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        stage = ScoreStage(recipe, Path("recipes"), rows_from="rows")
        out = run_dir / "scored"
        out.mkdir()
        (run_dir / ".work" / "score").mkdir(parents=True)
        started = time.perf_counter()
        result = stage.run(
            {"rows": run_dir / "rows"}, {"rows": out}, run_dir / ".work" / "score", _ctx(recipe, run_dir, teacher)
        )
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
    finally:
        teacher.close()
    return {
        "seconds": seconds,
        "rows": result.rows_out,
        # counted in polars: the scored rows' token ids as Python lists would add to the peak measured below
        "answer_tokens": queries.answer_tokens(frames.scan(out)),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "server_peak_rss_mb": peak[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/quickstart"), help="a finished run with curate")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--route-only", type=Path, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.route_only:
        print(json.dumps(route_once(args.route_only, args.batch_size)))
        return

    from dataengine.rows import CURATED_FEATURES, read_rows, write_shards

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        rows = read_rows(args.run / "curated") + read_rows(args.run / "rejected")
        write_shards(rows, run_dir / "rows", features=CURATED_FEATURES)
        child = [sys.executable, __file__, "--route-only", str(run_dir), "--batch-size", str(args.batch_size)]
        routed = json.loads(subprocess.run(child, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
        scored = score_once(run_dir, args.batch_size)
    print(f"{len(rows)} rows of {args.run}; batch size {args.batch_size}")
    print("| contender | rows | answer tokens | seconds | s per 1,000 answer tokens | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|")
    base = scored["seconds"] / scored["answer_tokens"]
    for name, r in (("route (transformers replay)", routed), ("score (vLLM prompt_logprobs)", scored)):
        per_k = 1000 * r["seconds"] / r["answer_tokens"]
        ratio = (r["seconds"] / r["answer_tokens"]) / base
        memory = f"{r['peak_rss_mb']:.0f}"
        if "server_peak_rss_mb" in r:
            memory += f" + server {r['server_peak_rss_mb']:.0f}"
        cells = [name, r["rows"], r["answer_tokens"], f"{r['seconds']:.1f}", f"{per_k:.2f} ({ratio:.2f}x)", memory]
        print("| " + " | ".join(map(str, cells)) + " |")


if __name__ == "__main__":
    main()
