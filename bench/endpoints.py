"""Two teacher servers against one on this machine, side by side in one run: the generate stage's tokens/s with
`teacher.endpoints` and `generate.tasks`, each vLLM CPU server pinned to cores by vLLM's own
VLLM_CPU_OMP_THREADS_BIND.

    .venv/bin/python bench/endpoints.py [--prompts 48] [--max-tokens 96] [--concurrency 16]

  one server, 1 core     endpoints [A (core 0)], 1 task
  two servers, 1 core    endpoints [A (core 0), B (core 1)], 2 tasks: the pool's scaling
  one server, 2 cores    endpoints [C (cores 0-1)], 1 task: the same hardware as one server

Every contender generates the same prompts greedily (an answer per prompt, no question step) through
`run_recipe`; tokens/s is the stage's answer tokens over its generation seconds (server start excluded).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

import orjson


def teacher(bind: str):
    from dataengine.recipe import parse_recipe

    recipe = parse_recipe(
        "name: t\nteacher:\n  model: builtin:smollm2-moe\n  vllm: {enforce_eager: true, max_model_len: 1024, "
        f"env: {{VLLM_CPU_OMP_THREADS_BIND: '{bind}', VLLM_CPU_KVCACHE_SPACE: '2'}}}}\n"
        "generate: {chat: {languages: [{code: en, quota: 1}]}}\n"
    )
    return recipe.teacher


def generate(urls: list[str], args: argparse.Namespace) -> float:
    from rich.console import Console

    from dataengine.manifest import Manifest
    from dataengine.recipe import parse_recipe
    from dataengine.runner import run_recipe

    work = Path(tempfile.mkdtemp(prefix="bench-endpoints-"))
    lines = [
        orjson.dumps({"prompt": f"Explain topic number {i} of a science course in a few sentences."})
        for i in range(args.prompts)
    ]
    (work / "prompts.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    recipe = parse_recipe(
        f"""
name: bench
teacher: {{model: builtin:smollm2-moe, endpoints: {urls}}}
generate:
  sampling: {{temperature: 0.0, max_tokens: {args.max_tokens}}}
  sources: [{{path: prompts.jsonl}}]
  max_concurrent_requests: {args.concurrency}
  tasks: {len(urls)}
  workers: {len(urls)}
""",
        base_dir=work,
    )
    run_recipe(recipe, work, run_dir=work / "run", console=Console(quiet=True))
    stats = Manifest.read(work / "run" / "generated").stats
    return stats["completion_tokens"] / stats["generation_seconds"]


def main() -> None:
    from dataengine.teacher.server import TeacherServer

    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight per task")
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="bench-endpoints-logs-"))
    rates = {}
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(TeacherServer(teacher("0"), logs / "a.log"))
        b = stack.enter_context(TeacherServer(teacher("1"), logs / "b.log"))
        rates["one server, 1 core"] = generate([a.base_url], args)
        rates["two servers, 1 core each"] = generate([a.base_url, b.base_url], args)
    with TeacherServer(teacher("0-1"), logs / "c.log") as c:
        rates["one server, 2 cores"] = generate([c.base_url], args)
    base = rates["one server, 1 core"]
    print(f"{args.prompts} prompts, {args.max_tokens} answer tokens at most, {args.concurrency} in flight per task")
    for name, rate in rates.items():
        print(f"{name:<26}{rate:>8.1f} tokens/s {rate / base:>6.2f}x")


if __name__ == "__main__":
    main()
