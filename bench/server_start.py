"""The teacher server's start and throughput on a small CPU machine, side by side in one run: the engine's pick (the
model in vLLM's EngineCore, `VLLM_ENABLE_V1_MULTIPROCESSING=0`) vs a Worker process bound to every core (the
engine's pick before) vs vLLM's own binding (a Worker on all cores but one).

    .venv/bin/python bench/server_start.py [--rounds 2] [--prompts 32] [--max-tokens 96] [--isa avx2]

Each contender starts the builtin teacher through the engine's own `TeacherServer`, in its own subprocess, one
after another, `--rounds` times (the same order each round, so a noisy neighbour hits each alike). Ready: from
start until the server answers. Throughput: the prompts sent at once, greedy, output tokens / seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from generate import AVX2_ONLY  # bench/generate.py's cap, beside this file

CORES = ",".join(map(str, sorted(os.sched_getaffinity(0))))
CONTENDERS = {
    "engine's pick": {},  # dataengine/hardware.py
    "Worker on all cores": {"VLLM_CPU_OMP_THREADS_BIND": CORES, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"},
    "vLLM's binding": {"VLLM_CPU_OMP_THREADS_BIND": "auto"},
}


def measure(name: str, prompts: int, max_tokens: int) -> dict:
    import httpx
    import psutil

    from dataengine.recipe import TeacherConfig
    from dataengine.teacher.server import TeacherServer

    vllm = {"enforce_eager": True, "max_model_len": 1024, "env": CONTENDERS[name]}
    teacher = TeacherConfig(model="builtin:smollm2-moe", vllm=vllm)
    log = Path(tempfile.mkdtemp(prefix="bench-start-")) / "server.log"
    started = time.monotonic()
    with TeacherServer(teacher, log, log=lambda _: None) as server:
        ready = time.monotonic() - started
        processes = [p.name() for p in psutil.Process(server.process.pid).children(recursive=True)]
        if (name == "engine's pick") == ("VLLM::Worker" in processes):
            sys.exit(f"{name}: not the process tree it stands for: {processes}")

        async def ask() -> int:
            async with httpx.AsyncClient(timeout=600) as client:
                body = {"model": "builtin:smollm2-moe", "max_tokens": max_tokens, "temperature": 0.0}
                answers = await asyncio.gather(
                    *[
                        client.post(
                            f"{server.base_url}/v1/chat/completions",
                            json={**body, "messages": [{"role": "user", "content": f"Explain topic {i} briefly."}]},
                        )
                        for i in range(prompts)
                    ]
                )
                return sum(a.json()["usage"]["completion_tokens"] for a in answers)

        began = time.monotonic()
        tokens = asyncio.run(ask())
        seconds = time.monotonic() - began
    return {"ready_s": ready, "tokens_per_s": tokens / seconds, "processes": processes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--isa", choices=["native", "avx2"], default="native")
    parser.add_argument("--only", choices=sorted(CONTENDERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        print("RESULT " + json.dumps(measure(args.only, args.prompts, args.max_tokens)), flush=True)
        return
    env = {**os.environ, **(AVX2_ONLY if args.isa == "avx2" else {})}
    results: dict[str, list[dict]] = {name: [] for name in CONTENDERS}
    for _ in range(args.rounds):
        for name in CONTENDERS:
            cmd = [sys.executable, __file__, "--only", name, "--prompts", str(args.prompts), "--max-tokens"]
            cmd.append(str(args.max_tokens))
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
            line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
            results[name].append(json.loads(line[len("RESULT ") :]))
            r = results[name][-1]
            print(f"{name:>20}: ready {r['ready_s']:5.1f} s, {r['tokens_per_s']:6.1f} tok/s, {r['processes']}")
    base = results["Worker on all cores"]
    ready0 = statistics.median(r["ready_s"] for r in base)
    speed0 = statistics.median(r["tokens_per_s"] for r in base)
    for name, runs in results.items():
        ready = statistics.median(r["ready_s"] for r in runs)
        speed = statistics.median(r["tokens_per_s"] for r in runs)
        print(
            f"{name:>20}: median ready {ready:5.1f} s ({ready - ready0:+.1f} s), "
            f"{speed:6.1f} tok/s ({speed / speed0:.2f}x Worker on all cores)"
        )


if __name__ == "__main__":
    main()
