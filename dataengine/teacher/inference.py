"""One pass of datatrove's InferenceRunner over documents, against a teacher endpoint: the generate stage's
rollouts and the judge stage's verdicts both run through it.

A pass is resumable: datatrove checkpoints finished documents under `<work>/checkpoints` and writes them to
`<work>/raw`, so a rerun sends no finished request again. When the endpoint stops answering, the endpoint is
recovered (our server restarted, a lost endpoint waited for) and the pass goes on from its checkpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import shutil
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
from datatrove.data import Document
from datatrove.pipeline.inference.checkpointing import CheckpointManager
from datatrove.pipeline.inference.run_inference import InferenceConfig, InferenceRunner
from datatrove.pipeline.inference.servers import EndpointServer
from datatrove.pipeline.inference.types import ServerError
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.pipeline.writers.disk_base import DiskWriter
from loguru import logger
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dataengine.logs import datatrove_logs_to
from dataengine.recipe import ExecutorSettings
from dataengine.teacher.server import TeacherEndpoint
from dataengine.teacher.tasks import Health, TaskTeacher, run_until_done, watching
from dataengine.teacher.throughput import FOLDER as THROUGHPUT
from dataengine.teacher.throughput import Follower, recorder

HEALTH_INTERVAL_S = 2.0
# request fields vLLM reads that the OpenAI client does not know (generate/rollout.py sets them)
VLLM_FIELDS = (
    "continue_final_message",
    "add_generation_prompt",
    "structured_outputs",
    "chat_template_kwargs",
    "thinking_token_budget",
)
# where a response's `routed_experts` travels from datatrove's endpoint to the rollout
ROUTED_EXPERTS = "dataengine_routed_experts"

# A rollout function's shared context hands it `on_done(tokens, started)`: the tokens the teacher wrote for
# the document and when its rollout began, for the progress bar and the throughput log.
OnDone = Callable[[int, float], None]
LOCAL = ExecutorSettings()  # one task, here


# the whole response of the OpenAI client's chat call, for the request that made it (`keep_whole`)
_WHOLE: ContextVar[dict | None] = ContextVar("whole_response", default=None)


def _put_back(response: dict, whole: dict) -> dict:
    """datatrove's rebuilt response with what it leaves out of the whole one: the message's reasoning and the
    usage's reasoning tokens."""
    message = whole["choices"][0].get("message") or {}
    if reasoning := message.get("reasoning") or message.get("reasoning_content"):
        response["choices"][0]["message"]["reasoning"] = reasoning
    if details := (whole.get("usage") or {}).get("completion_tokens_details"):
        response.setdefault("usage", {})["completion_tokens_details"] = details
    return response


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
        token = _WHOLE.set(None)
        try:
            response = await super()._make_request(payload)
            whole = _WHOLE.get()
        finally:
            _WHOLE.reset(token)
        if whole is not None:
            response = _put_back(response, whole)
        # datatrove keeps a choice's text and finish reason and the response's usage, in its result and in
        # its request cache; usage is the one free-form dict of the three, so the teacher's routing rides in it
        routed = response["choices"][0].pop("routed_experts", None)
        if routed is not None:
            response.setdefault("usage", {})[ROUTED_EXPERTS] = routed
        return response

    def keep_whole(self) -> None:
        """Through the OpenAI client (a non-local endpoint), datatrove rebuilds the response from the message's
        content and three usage counts: a reasoning parser's `reasoning` and the usage's reasoning tokens would
        be lost. The client's chat call is wrapped to leave the whole response in `_WHOLE`, which the request
        that made the call reads back (the same asyncio task, so the same context)."""
        client = self.client
        if client is None:
            return
        create = client.chat.completions.create

        async def create_and_keep(**kwargs: Any) -> Any:
            response = await create(**kwargs)
            _WHOLE.set(response.model_dump())
            return response

        completions = SimpleNamespace(create=create_and_keep)
        self.client = SimpleNamespace(chat=SimpleNamespace(completions=completions), completions=client.completions)

    async def monitor_health(self) -> None:
        failures = 0
        while failures < 3:
            await asyncio.sleep(HEALTH_INTERVAL_S)
            failures = 0 if await asyncio.to_thread(self.health) else failures + 1
        raise ServerError("the teacher stopped answering its health check")


class _Runner(InferenceRunner):
    """datatrove's runner, talking to the endpoint of its task (`TaskTeacher`), with that endpoint's health check."""

    task_teacher = TaskTeacher()
    whole_responses = False
    health: Health = staticmethod(lambda: True)
    url = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        old = self.checkpoint_manager
        self.checkpoint_manager = _Checkpoints(old.checkpoints_local_dir, old.records_per_chunk, self.request_cache)
        self.checkpoint_manager.writer = self.output_writer

    def run(self, data: Iterable[Document], rank: int = 0, world_size: int = 1) -> None:
        manager = self.checkpoint_manager
        raw = Path(self.output_writer.output_folder.path)
        mend_last_chunk(Path(manager.checkpoints_local_dir), raw, rank, manager.records_per_chunk)
        with self.task_teacher.open(rank) as (self.url, self.health):
            super().run(data, rank, world_size)

    def _init_server(self, rank: int) -> EndpointServer:
        config = dataclasses.replace(self.config, endpoint_url=self.url + "/v1")
        return endpoint_server(config, rank, self.health, self.whole_responses)

    async def _handle_record(self, doc: Document, *args: Any, **kwargs: Any) -> None:
        # datatrove runs each document as an asyncio task of its own, and leaves some of their failures unseen:
        # while it throttles, it takes the tasks that finished from asyncio.wait() and awaits them one by one
        # (run_inference.py, `done, tasks_pool = await asyncio.wait(...)`, then `for task in done: await task`).
        # The first that failed raises out of the loop; the rest of that batch are no longer in the pool its
        # cleanup cancels and gathers, so no one ever retrieves their exceptions. When the teacher dies, every
        # document in flight fails in the same turn of the loop, and asyncio prints each of those tasks, with
        # its traceback, as "Task exception was never retrieved" whenever it is collected (after the pass,
        # when the garbage collector comes round: on a loaded machine, where many fail at once). So each
        # document's task retrieves its own exception as it ends and logs it in a line: the pass still fails
        # with the first, where datatrove awaits it, and `run_until_done` recovers the teacher.
        task = asyncio.current_task()
        if task is not None:
            task.add_done_callback(functools.partial(_failure_seen, doc.id))
        await super()._handle_record(doc, *args, **kwargs)


class _Checkpoints(CheckpointManager):
    """datatrove's checkpoints, with the pass's last chunk written out before it is recorded finished.

    datatrove closes a full chunk's raw file before it records the chunk, but records the last (shorter) chunk at
    the end of the pass while that file is still open, its last lines still in a buffer: a run killed just then
    would find the pass recorded done up to a chunk whose raw file lacks them, and never write them again."""

    writer: DiskWriter

    async def cleanup_last_chunk(self, rank: int, chunk_index: int) -> None:
        self.writer.output_mg.close()  # every document is written by now; the writer's own close finds none open
        await super().cleanup_last_chunk(rank, chunk_index)


def _failure_seen(doc_id: str, task: asyncio.Task) -> None:
    """Retrieve a document task's exception, so asyncio never reports it unretrieved; say it in datatrove's log."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.info(f"document {doc_id} failed: {type(exc).__name__}: {str(exc)[:300]}")


DOCUMENTS = "documents"  # under a pass's work folder: its documents, one jsonl file per task


def deal(docs: Iterable[Document], folder: Path, tasks: int) -> int:
    """Write `docs` into `folder` as one jsonl file per task, dealt in turn (datatrove's readers give the task of
    rank r the r-th file), so no task's pipeline carries documents, pickled to Ray or Slurm, and no one holds
    them all; returns how many.

    `docs` come in id order, so a rerun deals every document to the same task at the same place: datatrove's
    checkpoints skip a finished chunk's documents by count. It is also the order the `Shard` step of earlier
    versions dealt them in, so a pass interrupted under one resumes under the other."""
    shutil.rmtree(folder, ignore_errors=True)
    dealt, last = 0, None
    with JsonlWriter(str(folder), output_filename="${rank}.jsonl", compression=None) as writer:
        for dealt, doc in enumerate(docs, start=1):
            if last is not None and doc.id < last:
                raise ValueError(f"documents out of id order: {doc.id!r} after {last!r}")
            writer.write(doc, rank=(dealt - 1) % tasks)
            last = doc.id
    return dealt


def endpoint_server(
    config: InferenceConfig, rank: int, health: Callable[[], bool], whole_responses: bool
) -> _RootEndpointServer:
    """datatrove's endpoint server for one task, with the teacher's health check."""
    server = _RootEndpointServer(config, rank)
    server.health = health
    server.keep_whole()
    if whole_responses:
        # datatrove talks to a non-local endpoint through the OpenAI client, which rebuilds the response
        # from its text and usage alone; its raw http path (used for local ones) returns it whole
        server.client = None
    return server


def inference_config(
    model: str, url: str, params: dict[str, Any], concurrency: int, timeout: float | None, use_chat: bool = True
) -> InferenceConfig:
    """How datatrove's runner reaches the served `model` at `url` (its root, without /v1); `params` (OpenAI's
    own names, which the OpenAI client takes as they are) go into every request that does not set them. Chat
    requests, or plain completions (`use_chat=False`: a prompt continued as it is)."""
    return InferenceConfig(
        server_type="endpoint",
        model_name_or_path=model,
        endpoint_url=url + "/v1",
        # a non-local endpoint is reached through the OpenAI client, which refuses to start without a key; the
        # teacher has none (a server started with --api-key is not supported: our health checks send no key),
        # so vLLM's own placeholder, never the user's OPENAI_API_KEY
        api_key="EMPTY",
        use_chat=use_chat,
        default_generation_params=params,
        max_concurrent_generations=concurrency,
        request_timeout=timeout,
        metric_interval=3600,
    )


def run_inference(
    endpoints: list[TeacherEndpoint],
    docs: Iterable[Document],
    work_dir: Path,
    rollout_fn: Callable[..., Any],
    config: Callable[[str], InferenceConfig],
    console: Console,
    what: str,
    records_per_chunk: int = 500,
    whole_responses: bool = False,
    executor: ExecutorSettings = LOCAL,
) -> float:
    """Run `rollout_fn` over `docs` with datatrove's InferenceRunner, as `executor.tasks` tasks over `endpoints`
    (`teacher/tasks.py`), `config(url)` saying how. Returns the seconds the teacher was generating: the first
    rollout's start to the last one's end in this pass (neither a server's start nor the executor's counts).
    Each document's result is written to `<work_dir>/raw` (read it with datatrove's JsonlReader). A dead or lost
    endpoint is recovered and its task runs again from its checkpoints; `what` names the work in the progress
    bar and in errors."""
    documents = work_dir / DOCUMENTS
    total = deal(docs, documents, executor.tasks)
    if not total:
        return 0.0
    tasks = min(executor.tasks, total)  # one file per task: fewer documents than tasks leave no empty task
    done_before = _finished(work_dir)
    throughput = work_dir / THROUGHPUT

    def pipeline(teacher: TaskTeacher) -> list:
        runner = _Runner(
            rollout_fn=rollout_fn,
            config=config(teacher.urls[0] if teacher.urls else "http://127.0.0.1"),  # each task sets its own
            output_writer=JsonlWriter(
                str(work_dir / "raw"), output_filename="${rank}_chunk_${chunk_index}.jsonl", compression=None
            ),
            # a function, not a closure over the progress bar: tasks may run in other processes (or on other
            # nodes); each appends its finished documents to its own file, which the bar below follows
            shared_context=functools.partial(_reporting, str(throughput)),
            checkpoints_local_dir=str(work_dir / "checkpoints"),
            records_per_chunk=records_per_chunk,
        )
        runner.task_teacher = teacher
        runner.whole_responses = whole_responses
        return [JsonlReader(str(documents), compression=None, add_file_path=False), runner]

    with _progress(console) as progress, datatrove_logs_to(work_dir / "datatrove.log"):
        bar = progress.add_task(what, total=total, completed=done_before, tokens=0)
        follower = Follower(throughput)

        def look() -> None:
            rollouts, tokens = follower()
            progress.update(bar, completed=done_before + rollouts, tokens=tokens)

        with watching(look):
            run_until_done(endpoints, executor, pipeline, tasks, work_dir, what)
    return follower.seconds


@contextlib.contextmanager
def _reporting(folder: str) -> Iterator[dict[str, OnDone]]:
    """The rollout function's `on_done`, in the task that runs it: a line per document in its own file."""
    with recorder(Path(folder)) as record:
        yield {"on_done": record}


def _finished(work_dir: Path) -> int:
    """How many documents a pass already wrote, to start the progress bar there. datatrove writes a document
    to its chunk's raw file and checkpoint both, and removes the checkpoint once the chunk is complete, so the
    ids are counted a chunk at a time: never more than a chunk's ids are held."""
    chunks: dict[tuple[str, int], list[Path]] = defaultdict(list)
    for path in (work_dir / "raw").glob("*_chunk_*.jsonl"):  # ${rank}_chunk_${chunk_index}.jsonl
        rank, chunk = path.name.removesuffix(".jsonl").split("_chunk_")
        chunks[rank, int(chunk)].append(path)
    for path in (work_dir / "checkpoints").glob("*/chunk_*.jsonl"):  # datatrove's {rank:05d}/chunk_{index:05d}
        chunks[path.parent.name, int(path.name.removesuffix(".jsonl").removeprefix("chunk_"))].append(path)
    return sum(len(_ids_in(paths)) for paths in chunks.values())


def mend_last_chunk(checkpoints: Path, raw: Path, rank: int, records_per_chunk: int) -> None:
    """Put back the number of task `rank`'s last finished chunk when a killed run left its file empty.

    datatrove saves that number by opening `last_chunk/<rank>.txt` for writing (which empties it) and then
    writing it, just after it removed the chunk's checkpoint; a run killed between the two leaves the file
    empty, and every later run of the pass fails reading it (`int('')`, checkpointing.py). The number follows
    from what the chunks left: chunk k is finished when its raw file holds `records_per_chunk` documents (a full
    chunk's file is closed before the chunk is recorded) and its checkpoint is gone (datatrove removes them in
    order). The pass's last, shorter chunk is taken for unfinished and asked again: never a row lost."""
    index = checkpoints / "last_chunk" / f"{rank:05d}.txt"
    if not index.is_file() or index.read_text().strip().isdigit():
        return
    last = -1
    while True:
        chunk = last + 1
        output = raw / f"{rank:05d}_chunk_{chunk}.jsonl"  # ${rank}_chunk_${chunk_index}.jsonl
        checkpoint = checkpoints / f"{rank:05d}" / f"chunk_{chunk:05d}.jsonl"
        if checkpoint.exists() or not output.is_file() or _documents_in(output) < records_per_chunk:
            break
        last = chunk
    logger.warning(f"task {rank}: the record of its last finished chunk was empty (a killed run); it is {last}")
    if last < 0:
        index.unlink()
        return
    written = index.with_suffix(".mended")
    written.write_text(str(last))
    written.replace(index)  # whole or not at all, unlike the write it mends


def _documents_in(path: Path) -> int:
    """The whole documents in a raw file (a line cut short by a crash is not one)."""
    whole = 0
    for line in path.read_bytes().splitlines():
        with contextlib.suppress(orjson.JSONDecodeError):
            orjson.loads(line)
            whole += 1
    return whole


def _ids_in(paths: list[Path]) -> set[str]:
    ids: set[str] = set()
    for path in paths:
        for line in path.read_bytes().splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):  # a line cut short by a crash
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
