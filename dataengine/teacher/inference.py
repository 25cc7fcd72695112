"""One pass of datatrove's InferenceRunner over documents, against a teacher endpoint: the generate stage's
rollouts and the judge stage's verdicts both run through it.

A pass is resumable: datatrove checkpoints finished documents under `<work>/checkpoints` and writes them to
`<work>/raw`, so a rerun sends no finished request again. When the endpoint stops answering, the endpoint is
recovered (our server restarted, a lost endpoint waited for) and the pass goes on from its checkpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from datatrove.data import Document
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.inference.run_inference import InferenceConfig, InferenceRunner
from datatrove.pipeline.inference.servers import EndpointServer
from datatrove.pipeline.inference.types import ServerError
from datatrove.pipeline.writers import JsonlWriter
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dataengine.errors import StageError
from dataengine.logs import datatrove_logs_to
from dataengine.teacher.server import TeacherEndpoint
from dataengine.teacher.throughput import FILE as THROUGHPUT
from dataengine.teacher.throughput import recorder

HEALTH_INTERVAL_S = 2.0
# request fields vLLM reads that the OpenAI client does not know (generate/rollout.py sets them)
VLLM_FIELDS = ("continue_final_message", "add_generation_prompt", "structured_outputs")
# where a response's `routed_experts` travels from datatrove's endpoint to the rollout
ROUTED_EXPERTS = "dataengine_routed_experts"

# A rollout function's shared context hands it `on_done(tokens, started)`: the tokens the teacher wrote for
# the document and when its rollout began, for the progress bar and the throughput log.
OnDone = Callable[[int, float], None]


class _RootEndpointServer(EndpointServer):
    """datatrove's EndpointServer takes its URL as the OpenAI client's base (which must end in /v1)
    but probes readiness at `<url>/v1/models`; we hand it `<root>/v1` and give the probe the root.

    Its health monitor asks the run's teacher: once the teacher fails three checks in a row, datatrove
    fails every waiting request at once (instead of each retrying a dead server for minutes), the
    pass ends, and the teacher is recovered and the pass runs again from datatrove's checkpoints."""

    health: Callable[[], bool] = staticmethod(lambda: True)

    def get_base_url(self) -> str:
        return self.endpoint_url.rstrip("/").removesuffix("/v1")

    async def _make_request(self, payload: dict) -> dict:
        # a copy: datatrove's client path pops "model" from the dict it is given, and a retry sends it again
        payload = dict(payload)
        if self.client is not None and (vllm_fields := {k: payload.pop(k) for k in VLLM_FIELDS if k in payload}):
            # a non-local endpoint is reached through the OpenAI client, whose create() refuses keyword
            # arguments that are not OpenAI's: vLLM's own fields travel in the body through extra_body
            payload["extra_body"] = vllm_fields
        response = await super()._make_request(payload)
        # datatrove keeps a choice's text and finish reason and the response's usage, in its result and in
        # its request cache; usage is the one free-form dict of the three, so the teacher's routing rides in it
        routed = response["choices"][0].pop("routed_experts", None)
        if routed is not None:
            response.setdefault("usage", {})[ROUTED_EXPERTS] = routed
        return response

    async def monitor_health(self) -> None:
        failures = 0
        while failures < 3:
            await asyncio.sleep(HEALTH_INTERVAL_S)
            failures = 0 if await asyncio.to_thread(self.health) else failures + 1
        raise ServerError("the teacher stopped answering its health check")


class _Runner(InferenceRunner):
    health: Callable[[], bool] = staticmethod(lambda: True)
    whole_responses = False

    def _init_server(self, rank: int) -> EndpointServer:
        return endpoint_server(self.config, rank, self.health, self.whole_responses)


def endpoint_server(
    config: InferenceConfig, rank: int, health: Callable[[], bool], whole_responses: bool
) -> _RootEndpointServer:
    """datatrove's endpoint server for one task, with the teacher's health check."""
    server = _RootEndpointServer(config, rank)
    server.health = health
    if whole_responses:
        # datatrove talks to a non-local endpoint through the OpenAI client, which rebuilds the response
        # from its text and usage alone; its raw http path (used for local ones) returns it whole
        server.client = None
    return server


def inference_config(
    model: str, url: str, params: dict[str, Any], concurrency: int, timeout: float | None
) -> InferenceConfig:
    """How datatrove's runner reaches the served `model` at `url` (its root, without /v1); `params` (OpenAI's
    own names, which the OpenAI client takes as they are) go into every request that does not set them."""
    return InferenceConfig(
        server_type="endpoint",
        model_name_or_path=model,
        endpoint_url=url + "/v1",
        # a non-local endpoint is reached through the OpenAI client, which refuses to start without a key; the
        # teacher has none (a server started with --api-key is not supported: our health checks send no key),
        # so vLLM's own placeholder, never the user's OPENAI_API_KEY
        api_key="EMPTY",
        use_chat=True,
        default_generation_params=params,
        max_concurrent_generations=concurrency,
        request_timeout=timeout,
        metric_interval=3600,
    )


def run_inference(
    endpoint: TeacherEndpoint,
    docs: list[Document],
    work_dir: Path,
    rollout_fn: Callable[..., Any],
    config: Callable[[str], InferenceConfig],
    console: Console,
    what: str,
    records_per_chunk: int = 500,
    whole_responses: bool = False,
) -> float:
    """Run `rollout_fn` over `docs` with datatrove's InferenceRunner against `endpoint`, `config(url)` saying
    how; returns the seconds it ran. Each document's result is written to `<work_dir>/raw` (read it with
    datatrove's JsonlReader). A dead or lost endpoint is recovered and the pass goes on from the checkpoints;
    `what` names the work in the progress bar and in the error when the endpoint cannot be recovered."""
    done_before = len(_ids_in(work_dir / "raw") | _ids_in(work_dir / "checkpoints"))
    with recorder(work_dir / THROUGHPUT) as record, _progress(console) as progress:
        task = progress.add_task(what, total=len(docs), completed=done_before, tokens=0)

        def on_done(tokens: int, started: float) -> None:
            record(tokens, started)
            progress.advance(task)
            progress.update(task, tokens=progress.tasks[task].fields["tokens"] + tokens)

        started = time.time()
        with datatrove_logs_to(work_dir / "datatrove.log"):
            while True:
                url = endpoint.url()
                # datatrove would poll an endpoint that does not answer for minutes before its first request
                if not endpoint.healthy() and endpoint.recover("it does not answer"):
                    url = endpoint.url()
                # a fresh runner and executor per attempt: a restarted teacher listens on a new port
                runner = _Runner(
                    rollout_fn=rollout_fn,
                    config=config(url),
                    output_writer=JsonlWriter(
                        str(work_dir / "raw"), output_filename="${rank}_chunk_${chunk_index}.jsonl", compression=None
                    ),
                    # functions, not objects: the executor deep-copies the pipeline, and a function is copied by
                    # reference (a bound method would copy the endpoint with it)
                    shared_context=lambda: {"on_done": on_done},
                    checkpoints_local_dir=str(work_dir / "checkpoints"),
                    records_per_chunk=records_per_chunk,
                )
                runner.health = lambda: endpoint.healthy()
                runner.whole_responses = whole_responses
                executor = LocalPipelineExecutor(
                    pipeline=[docs, runner], tasks=1, workers=1, logging_dir=str(work_dir / "logs")
                )
                try:
                    executor.run()
                    break
                except Exception as exc:
                    failure = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
                    if not endpoint.recover(failure):
                        raise StageError(
                            f"{what} failed: {failure}\nlog: {work_dir / 'logs'}; run again to resume"
                        ) from exc
    return time.time() - started


def _ids_in(folder: Path) -> set[str]:
    """Ids of documents already written (raw output or checkpoints), to start the progress bar there."""
    ids: set[str] = set()
    for path in folder.rglob("*.jsonl") if folder.exists() else []:
        for line in path.read_bytes().splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                ids.add(orjson.loads(line)["id"])
    return ids


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("· {task.fields[tokens]} tokens"),
        TimeElapsedColumn(),
        console=console,
    )
