"""What a wave of requests costs the tests' teacher on a small CPU, by how many are in flight (issue 26): the same
number of answer tokens each, `--in-flight` requests at once against one vLLM server the engine starts (the tests'
builtin teacher, top-1, the engine's CPU settings), side by side in one run, alternating.

    .venv/bin/python bench/decode_batch.py [--in-flight 2 16] [--tokens 32] [--rounds 3] [--isa avx2]

Every request asks `--tokens` tokens with `ignore_eos`, so every wave is that many decode steps. If a step cost what
its sequences do, 16 in flight would take 8x the time of 2; on a 2-core EPYC it takes 2x (each step reads all the
weights, whatever the batch): a run's time follows its longest chain of steps more than its token count, which is
why the tests that only count rows generate short answers (tests/conftest.py: SHORT).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from generate import AVX2_ONLY  # bench/generate.py's cap, beside this file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def wave(url: str, model: str, in_flight: int, tokens: int) -> float:
    import httpx

    def ask(i: int) -> int:
        body = {"model": model, "prompt": f"Write about the number {i}.", "max_tokens": tokens, "ignore_eos": True}
        answer = httpx.post(f"{url}/v1/completions", json=body, timeout=600).json()
        return answer["usage"]["completion_tokens"]

    started = time.perf_counter()
    with ThreadPoolExecutor(in_flight) as pool:
        made = list(pool.map(ask, range(in_flight)))
    assert made == [tokens] * in_flight, made
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--in-flight", type=int, nargs="+", default=[2, 16])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--isa", choices=["native", "avx2"], default="native")
    args = parser.parse_args()
    if args.isa == "avx2":
        os.environ.update(AVX2_ONLY)  # before the server starts: it inherits the cap

    from dataengine.recipe import TeacherConfig
    from dataengine.teacher.server import TeacherServer

    teacher = TeacherConfig(
        model="builtin:smollm2-moe",
        builtin={"top_k": 1},
        vllm={"enforce_eager": True, "max_model_len": 1024, "env": {"VLLM_CPU_KVCACHE_SPACE": "2"}},
    )
    times: dict[int, list[float]] = {n: [] for n in args.in_flight}
    with tempfile.TemporaryDirectory() as folder, TeacherServer(teacher, Path(folder) / "server.log") as server:
        wave(server.base_url, teacher.model, 2, 4)  # warm-up: the first requests pay one-off costs
        for _ in range(args.rounds):
            for n in args.in_flight:
                times[n].append(wave(server.base_url, teacher.model, n, args.tokens))
    base = statistics.median(times[args.in_flight[0]])
    print(f"| in flight | wave of {args.tokens} tokens each, median (s) | tokens/s | time vs {args.in_flight[0]} |")
    print("|---:|---:|---:|---:|")
    for n, measured in times.items():
        median = statistics.median(measured)
        print(f"| {n} | {median:.2f} ({', '.join(f'{t:.2f}' for t in measured)}) | {n * args.tokens / median:.0f} "
              f"| {median / base:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
