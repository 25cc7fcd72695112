"""The generate stage's own ceiling: requests/s and tokens/s it sustains against an instant OpenAI-compatible
server, and which layer costs what. Side by side in one run, against the same server.

    .venv/bin/python bench/client.py [--requests 2000] [--concurrency 64] [--answer-tokens 300]

The server (`--serve`, started by the script in a process of its own) answers every chat completion at once
with the same canned answer of `--answer-tokens` words and a usage block that says so: what is measured is our
side. Each contender runs in its own subprocess:

  httpx         a common async client (httpx), `concurrency` requests in flight: for reference
  datatrove     datatrove's InferenceRunner, one request per document, no checkpoints (its requests go out on
                raw asyncio streams): the base the layers below are compared with
  checkpoints   the same, with datatrove's checkpoints and request cache (records_per_chunk 500)
  run_inference the same through teacher/inference.py (task sharding, health monitor, progress, throughput log)
  stage xN      the whole generate stage (`dataengine run`), N tasks: our rollout code, rows and shards too

A GPU node's demand to compare with: datatrove's H100 benchmark reaches 5,310 tokens/s per GPU on
Qwen3-30B-A3B, so 8 GPUs writing ~300-token answers ask for ~140 requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
MODEL = "canned"


def serve(port: int, answer_tokens: int) -> None:
    """An instant chat-completions server: a bare ASGI app on uvicorn (no framework in the way)."""
    import uvicorn

    text = " ".join(["token"] * answer_tokens)
    models = orjson.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["method"] == "GET":
            payload = models
        else:
            request = orjson.loads(body)
            prompt = sum(len(m["content"].split()) for m in request.get("messages", []))
            payload = orjson.dumps(
                {
                    "id": "c",
                    "object": "chat.completion",
                    "model": MODEL,
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
                    ],
                    "usage": {
                        "prompt_tokens": prompt,
                        "completion_tokens": answer_tokens,
                        "total_tokens": prompt + answer_tokens,
                    },
                }
            )
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, http="httptools")


def prompts(n: int) -> list[str]:
    return [f"Explain item {i} of the list in two sentences." for i in range(n)]


# ------------------------------------------------------------------ contenders (each in a subprocess)


def run_httpx(url: str, args: argparse.Namespace) -> dict:
    import httpx

    async def go() -> int:
        limits = httpx.Limits(max_connections=args.concurrency)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
            gate = asyncio.Semaphore(args.concurrency)
            tokens = 0

            async def one(prompt: str) -> None:
                nonlocal tokens
                async with gate:
                    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 512}
                    response = await client.post("/v1/chat/completions", content=orjson.dumps(body))
                    tokens += orjson.loads(response.content)["usage"]["completion_tokens"]

            await asyncio.gather(*(one(p) for p in prompts(args.requests)))
            return tokens

    started = time.perf_counter()
    tokens = asyncio.run(go())
    return {"seconds": time.perf_counter() - started, "tokens": tokens}


async def _answer(document, generate, **_):
    result = await generate({"messages": [{"role": "user", "content": document.text}], "max_tokens": 512})
    return {"text": result.text, "tokens": result.usage.get("completion_tokens", 0)}


def _docs(n: int):
    from datatrove.data import Document

    return [Document(text=p, id=f"p{i:07d}") for i, p in enumerate(prompts(n))]


def run_datatrove(url: str, args: argparse.Namespace, checkpoints: bool) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.inference.run_inference import InferenceRunner
    from datatrove.pipeline.writers import JsonlWriter

    from dataengine.logs import datatrove_logs_to
    from dataengine.teacher.inference import endpoint_server, inference_config

    class Runner(InferenceRunner):
        def _init_server(self, rank: int):
            return endpoint_server(self.config, rank, lambda: True, whole_responses=False)

    work = Path(tempfile.mkdtemp(prefix="bench-client-"))
    config = inference_config(MODEL, url, {}, args.concurrency, 60)
    runner = Runner(
        rollout_fn=_answer,
        config=config,
        output_writer=JsonlWriter(
            str(work / "raw"), output_filename="${rank}_chunk_${chunk_index}.jsonl", compression=None
        ),
        checkpoints_local_dir=str(work / "checkpoints") if checkpoints else None,
        records_per_chunk=500,
    )
    started = time.perf_counter()
    with datatrove_logs_to(work / "datatrove.log"):
        LocalPipelineExecutor([_docs(args.requests), runner], tasks=1, workers=1, logging_dir=str(work / "logs")).run()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "tokens": args.requests * args.answer_tokens}


def run_run_inference(url: str, args: argparse.Namespace) -> dict:
    from rich.console import Console

    from dataengine.recipe import TeacherConfig
    from dataengine.teacher.inference import inference_config, run_inference
    from dataengine.teacher.server import TeacherEndpoint

    work = Path(tempfile.mkdtemp(prefix="bench-client-"))
    endpoint = TeacherEndpoint(TeacherConfig(model=MODEL, endpoint=url), work / "teacher.log")
    seconds = run_inference(
        [endpoint],
        _docs(args.requests),
        work,
        _counted_answer,
        lambda u: inference_config(MODEL, u, {}, args.concurrency, 60),
        Console(quiet=True),
        "bench",
        records_per_chunk=500,
    )
    return {"seconds": seconds, "tokens": args.requests * args.answer_tokens}


async def _counted_answer(document, generate, *, on_done):
    started = time.time()
    result = await _answer(document, generate)
    on_done(result["tokens"], started)
    return result


def run_stage(url: str, args: argparse.Namespace, tasks: int) -> dict:
    from rich.console import Console

    from dataengine.manifest import Manifest
    from dataengine.recipe import parse_recipe
    from dataengine.runner import run_recipe

    work = Path(tempfile.mkdtemp(prefix="bench-client-"))
    (work / "prompts.jsonl").write_bytes(b"".join(orjson.dumps({"prompt": p}) + b"\n" for p in prompts(args.requests)))
    recipe = parse_recipe(
        f"""
name: bench
teacher: {{model: {MODEL}, endpoint: {url}}}
generate:
  sampling: {{temperature: 0.0, max_tokens: 512}}
  sources: [{{path: prompts.jsonl}}]
  max_concurrent_requests: {args.concurrency}
  records_per_chunk: 500
  tasks: {tasks}
  workers: {tasks}
""",
        base_dir=work,
    )
    started = time.perf_counter()
    run_recipe(recipe, work, run_dir=work / "run", console=Console(quiet=True))
    total = time.perf_counter() - started
    stats = Manifest.read(work / "run" / "generated").stats
    return {"seconds": stats["generation_seconds"], "stage_seconds": total, "tokens": stats["completion_tokens"]}


def contender(name: str, url: str, args: argparse.Namespace) -> dict:
    if name == "httpx":
        return run_httpx(url, args)
    if name in ("datatrove", "checkpoints"):
        return run_datatrove(url, args, checkpoints=name == "checkpoints")
    if name == "run_inference":
        return run_run_inference(url, args)
    return run_stage(url, args, int(name.removeprefix("stage x")))


# ------------------------------------------------------------------ driver


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--answer-tokens", type=int, default=300)
    parser.add_argument("--tasks", default="1,2,4", help="generate stage task counts")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--contender", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.answer_tokens)
        return
    if args.contender:
        print(json.dumps(contender(args.contender, args.url, args)))
        return

    import httpx

    from dataengine.teacher.server import free_port

    port = free_port("127.0.0.1")
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port), "--answer-tokens", str(args.answer_tokens)]
    )
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{url}/v1/models").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        names = ["httpx", "datatrove", "checkpoints", "run_inference"] + [f"stage x{t}" for t in args.tasks.split(",")]
        common = ["--requests", str(args.requests), "--concurrency", str(args.concurrency)]
        common += ["--answer-tokens", str(args.answer_tokens), "--url", url]
        print(f"{args.requests} requests, {args.concurrency} in flight per task, {args.answer_tokens}-token answers")
        print(f"{'contender':<15}{'requests/s':>12}{'tokens/s':>12}{'vs datatrove':>14}  notes")
        rates = {}
        for name in names:
            done = subprocess.run(
                [sys.executable, __file__, "--contender", name, *common], capture_output=True, text=True, cwd=ROOT
            )
            if done.returncode != 0:
                print(f"{name:<15} failed: {done.stderr[-800:]}")
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            rates[name] = rate = args.requests / result["seconds"]
            ratio = f"{rate / rates['datatrove']:.2f}x" if "datatrove" in rates else ""
            note = f"whole stage {result['stage_seconds']:.1f}s" if "stage_seconds" in result else ""
            print(f"{name:<15}{rate:>12.0f}{result['tokens'] / result['seconds']:>12.0f}{ratio:>14}  {note}")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
