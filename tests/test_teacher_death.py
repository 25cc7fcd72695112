"""The teacher dies with requests in flight: the pass fails with the engine's own error, and no document task's
exception is left for asyncio to print as "Task exception was never retrieved".

A stand-in OpenAI-compatible teacher on loopback answers the requests of the first documents and holds the
others; once it holds as many as the pass may have in flight, it dies: every held request (and any later one)
gets vLLM's 500, and its health check fails. The run's event loop is held still while the server answers
them all, so every in-flight document fails in the same turn of the loop: the moment datatrove's runner
awaits the first failure of a batch and abandons the rest (its throttle loop, run_inference.py). No sleeps:
the server and the loop meet on events.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import io
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from datatrove.data import Document
from rich.console import Console

from dataengine.errors import StageError
from dataengine.generate.rollout import rollout
from dataengine.generate.stage import teacher_config
from dataengine.recipe import JudgeConfig, parse_recipe
from dataengine.teacher.inference import run_inference
from dataengine.teacher.server import TeacherEndpoint
from dataengine.verdicts import ask_verdict, judge_config, verdict_document
from tests.conftest import JsonHandler

IN_FLIGHT = 4  # the pass's max_concurrent_requests: the server dies once it holds this many
ANSWERED = 2  # the first documents, answered before the server dies
DOCUMENTS = 10  # more than in flight plus answered: datatrove's runner is throttling when the server dies
WAIT_S = 10.0  # how long either side waits for the other before the test fails (a deadlock, not a sync)
NEVER_RETRIEVED = "exception was never retrieved"  # asyncio's words for a task (or future) nobody awaited

RECIPE = """
name: dying
teacher: {{model: teacher, endpoint: "http://127.0.0.1:{port}", recovery: {{max_attempts: 1, backoff_s: 0.01}}}}
generate:
  max_concurrent_requests: {in_flight}
  chat: {{languages: [{{code: en, quota: 1}}]}}
"""

DEAD_ENGINE = json.dumps(
    {"error": {"message": "EngineCore encountered an issue", "type": "InternalServerError", "code": 500}}
).encode()


class _DyingTeacher(ThreadingHTTPServer):
    """Answers the requests of the documents in `answered`; holds every other request until it holds `held`,
    then dies: the held requests (and all later ones) get a 500, the health check a 503. Before the held
    requests are answered, the run's event loop (`loop`, set by the rollout) is stopped in a callback until
    all their connections are closed, so that the run sees every failure at once."""

    daemon_threads = True

    def __init__(self, answered: set[str], held: int) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answered, self.to_hold = answered, held
        self.loop: asyncio.AbstractEventLoop | None = None
        self.lock = threading.Lock()
        self.holding: set[socket.socket] = set()
        self.closed = 0
        self.dead, self.frozen, self.all_closed = threading.Event(), threading.Event(), threading.Event()
        self.problems: list[str] = []

    def hold(self, request: socket.socket) -> None:
        with self.lock:
            self.holding.add(request)
            last = len(self.holding) == self.to_hold
        if last:
            self._die()
        elif not self.dead.wait(WAIT_S):
            self.problems.append(f"held {len(self.holding)} requests, never {self.to_hold}")

    def _die(self) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self._freeze)
        if not self.frozen.wait(WAIT_S):
            self.problems.append("the run's event loop did not stop")
        self.dead.set()

    def _freeze(self) -> None:  # in the run's event loop: it reads no response until all are written
        self.frozen.set()
        if not self.all_closed.wait(WAIT_S):
            self.problems.append("the held requests were not all answered")

    def shutdown_request(self, request: socket.socket) -> None:
        super().shutdown_request(request)
        with self.lock:
            if request in self.holding:
                self.closed += 1
                if self.closed == self.to_hold:
                    self.all_closed.set()


class _Handler(JsonHandler):
    server: _DyingTeacher

    def do_GET(self) -> None:  # noqa: N802 (http.server's name) -- the health check
        if self.server.dead.is_set():
            self._send(503, b"")
        else:
            self._send(200, b'{"data": []}')

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        document = body["user"].split("/")[0]  # the rollouts tag each request "<document id>/<role>"
        if document in self.server.answered and not self.server.dead.is_set():
            choice = {"index": 0, "message": {"role": "assistant", "content": "Why?"}, "finish_reason": "stop"}
            usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
            self._send(200, json.dumps({"id": "r", "choices": [choice], "usage": usage}).encode())
            return
        if not self.server.dead.is_set():
            self.server.hold(self.request)
        self._send(500, DEAD_ENGINE)


@pytest.fixture
def asyncio_errors() -> Iterator[list[str]]:
    """What asyncio logs as errors while the test runs (a task nobody awaited, when it is collected)."""
    found: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            found.append(record.getMessage())

    catch, asyncio_logger = Catch(logging.ERROR), logging.getLogger("asyncio")
    asyncio_logger.addHandler(catch)
    try:
        yield found
    finally:
        asyncio_logger.removeHandler(catch)


def _generate_docs(task: str) -> list[Document]:
    meta = {
        "task": task,
        "rollouts": 1,
        "max_tokens": 8,
        "question_max_tokens": 8,
        "question_seed": 1,
        "answer_seeds": [2],
        "system_prompt": None,
        "answer_prefix": None,
        "answer_regex": None,
    }
    return [Document(text=f"prompt {i}", id=f"p{i:02d}", metadata=dict(meta)) for i in range(DOCUMENTS)]


def _judge_docs() -> list[Document]:
    cfg = JudgeConfig(max_concurrent_requests=IN_FLIGHT)
    rows = [
        {
            "id": f"p{i:02d}",
            "messages": [{"role": "user", "content": f"q {i}"}, {"role": "assistant", "content": f"a {i}"}],
            "kind": "chat",
            "language": "en",
        }
        for i in range(DOCUMENTS)
    ]
    return [verdict_document(row, cfg) for row in rows]


# what the pass asks of each document: the generate stage's instruct prompts (killed at their question), its
# chat prompts (killed at their answers, which a rollout gathers), and the judge's verdicts
PASSES = {
    "question": (rollout, lambda: _generate_docs("instruct_answer"), "generate"),
    "answers": (rollout, lambda: _generate_docs("chat"), "generate"),
    "verdicts": (ask_verdict, _judge_docs, "judge"),
}


@pytest.mark.parametrize("asked", sorted(PASSES))
def test_a_teacher_dying_mid_pass_fails_it_with_no_task_exception_left_unretrieved(
    tmp_path: Path, asked: str, asyncio_errors: list[str], capfd: pytest.CaptureFixture[str]
):
    rollout_fn, docs, config = PASSES[asked]
    server = _DyingTeacher({f"p{i:02d}" for i in range(ANSWERED)}, held=IN_FLIGHT)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    async def asking(document: Document, generate: Callable, *, on_done: Callable) -> object:
        server.loop = asyncio.get_running_loop()  # the loop datatrove's runner runs the documents in
        return await rollout_fn(document, generate, on_done=on_done)

    recipe = parse_recipe(RECIPE.format(port=server.server_port, in_flight=IN_FLIGHT))
    make_config: Callable = (
        functools.partial(teacher_config, recipe)
        if config == "generate"
        else functools.partial(judge_config, JudgeConfig(max_concurrent_requests=IN_FLIGHT), "teacher")
    )
    lines: list[str] = []
    endpoint = TeacherEndpoint(recipe.teacher, tmp_path / "unused.log", lines.append)
    work = tmp_path / "work"
    try:
        with pytest.raises(StageError) as failed:
            run_inference(
                [endpoint],
                docs(),
                work,
                asking,
                make_config,
                Console(file=io.StringIO()),
                "asking",
                records_per_chunk=2,
            )
    finally:
        server.shutdown()
        server.server_close()
    gc.collect()  # a task nobody awaited says so when it is collected

    assert not server.problems
    assert server.dead.is_set() and server.closed == IN_FLIGHT
    # the engine's own error: the endpoint is waited for, and the 500s it died with are named
    assert "did not answer after 1 attempts" in str(failed.value)
    assert "InternalServerError" in str(failed.value)
    # what the teacher finished before it died is kept for the next run
    kept = [json.loads(line)["id"] for path in (work / "raw").glob("*.jsonl") for line in path.read_text().splitlines()]
    assert sorted(kept) == [f"p{i:02d}" for i in range(ANSWERED)]
    leaked = [e for e in asyncio_errors if NEVER_RETRIEVED in e]
    assert not leaked, leaked[0]
    out, err = capfd.readouterr()
    assert NEVER_RETRIEVED not in out + err
    assert NEVER_RETRIEVED not in (work / "datatrove.log").read_text()
