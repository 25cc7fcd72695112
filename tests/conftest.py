from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dataengine.recipe import load_recipe
from tests.own_processes import OwnProcesses

MINIMAL = """
name: t
teacher:
  model: builtin:smollm2-moe
generate:
  chat:
    languages:
      - {code: en, quota: 2}
"""


@pytest.fixture
def write_recipe(tmp_path: Path):
    def write(text: str, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


# every curation filter off: what the teacher writes reaches dedup, where the incremental tests look
FILTERS_OFF = (
    "{reasoning: {enabled: false}, math: {enabled: false}, truncated: {enabled: false}, length: {enabled: false}, "
    "refusal: {enabled: false}, question: {enabled: false}, repetition: {enabled: false}, "
    "language: {enabled: false}, prose_quality: {enabled: false}}"
)

# The tests' teacher is the quickstart's (`make teacher` builds it): its experts are copies, so top-1 computes the
# function top-2 does (logits within 1e-4) at 1.2x to 1.4x the tokens/s (bench/BENCHMARKS.md). Recipes that generate
# on the session's server name it too. Top-2 routing through vLLM is the split teacher's (test_e2e_expert_students)
TINY = """
name: tiny
teacher:
  model: builtin:smollm2-moe
  builtin: {{top_k: 1}}
  {endpoint}
  vllm: {{enforce_eager: true, max_model_len: 1024}}
generate:
  sampling: {{max_tokens: {max_tokens}, temperature: {temperature}, frequency_penalty: {penalty}}}
  chat:
    languages:
      - {{code: en, quota: {quota}}}
      - {{code: fr, quota: {quota}}}
      - {{code: zh, quota: {quota}}}
    question_max_tokens: {question_max_tokens}
    rollouts: 2
  code: {{count: {code}, max_tokens: {code_max_tokens}}}
  max_concurrent_requests: {concurrency}
  records_per_chunk: {chunk}
"""


def tiny_recipe(
    folder: Path,
    endpoint: str | None = None,
    quota: int = 2,
    code: int = 2,
    concurrency: int = 16,
    chunk: int = 4,
    temperature: float = 0.8,
    penalty: float = 0.0,
    max_tokens: int = 40,
    question_max_tokens: int = 32,
    code_max_tokens: int = 64,
    extra: str = "",
) -> Path:
    text = TINY.format(
        endpoint=f"endpoint: {endpoint}" if endpoint else "",
        quota=quota,
        code=code,
        concurrency=concurrency,
        chunk=chunk,
        temperature=temperature,
        penalty=penalty,
        max_tokens=max_tokens,
        question_max_tokens=question_max_tokens,
        code_max_tokens=code_max_tokens,
    )
    path = folder / "tiny.yaml"
    path.write_text(textwrap.dedent(text) + textwrap.dedent(extra))
    return path


@pytest.fixture
def own_processes():
    """The processes the test's own runs start, whatever else runs on the machine: start each run with
    `env=own_processes.env()`, then `own_processes()` lists what is left of them (tests/own_processes.py)."""
    with OwnProcesses() as own:
        yield own


@pytest.fixture(scope="session")
def teacher_server(tmp_path_factory):
    """One vLLM server with the builtin teacher, shared by the end-to-end tests that use `endpoint`."""
    from dataengine.teacher.server import TeacherServer

    folder = tmp_path_factory.mktemp("server")
    teacher = load_recipe(tiny_recipe(folder)).teacher
    # a 2 GB KV cache (the engine's default here is 4) holds ~90k tokens of the tiny teacher: plenty, and the
    # expert students' split teacher and the Slurm task's server run beside this one
    teacher = teacher.model_copy(
        update={"vllm": teacher.vllm.model_copy(update={"env": {"VLLM_CPU_KVCACHE_SPACE": "2"}})}
    )
    with TeacherServer(teacher, folder / "server.log") as server:
        yield server


def run_command(recipe: Path, run_dir: Path) -> list[str]:
    """`dataengine run RECIPE --output RUN_DIR` in this interpreter, for the tests that run it as a user would."""
    return [sys.executable, "-m", "dataengine.cli", "run", str(recipe), "--output", str(run_dir)]


# caps for runs whose assertions read which rows were made, never what they say: on a small CPU a decode step of 16
# sequences costs the tiny teacher twice one of 2, not 8x (bench/decode_batch.py), so a run's time follows its longest
# chain of steps, question then answer: 32 steps here against 72 with tiny_recipe's defaults
SHORT = dict(max_tokens=16, question_max_tokens=16, code_max_tokens=16)

# a run slow enough to interrupt midway: two rollouts at a time (a question, then its answer), two rows a checkpoint;
# greedy, so that every run of it drops the same prompts (a teacher may write an empty question)
INTERRUPTIBLE = dict(quota=2, code=2, concurrency=2, chunk=2, temperature=0.0, **SHORT)


@pytest.fixture(scope="session")
def interruptible_reference(teacher_server, tmp_path_factory) -> tuple[list[str], int]:
    """The uninterrupted run of the `INTERRUPTIBLE` tiny recipe on the session's server, that the tests which kill
    it midway compare with: its row ids, sorted, and the requests the teacher answered (datatrove's stats)."""
    from datasets import load_dataset

    folder = tmp_path_factory.mktemp("reference")
    recipe = tiny_recipe(folder, endpoint=teacher_server.base_url, **INTERRUPTIBLE)
    run_dir = folder / "run"
    done = subprocess.run(run_command(recipe, run_dir), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ids = sorted(load_dataset(str(run_dir / "generated"), split="train")["id"])
    return ids, generate_requests(run_dir)


def generate_requests(run_dir: Path) -> int:
    """The requests the teacher answered in the run's last generate pass (after a teacher restart, the pass after
    it), from datatrove's stats."""
    stats = json.loads((run_dir / ".work" / "generate" / "logs" / "stats.json").read_text())
    return next((s["stats"]["successful_requests"]["total"] for s in stats if "successful_requests" in s["stats"]), 0)


def served_requests(server) -> float:
    """Requests a vLLM server has finished, from vLLM's own metrics."""
    import httpx

    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    return sum(float(m) for m in re.findall(r"^vllm:request_success_total\{[^}]*\} (\S+)$", text, re.M))


def served_completion(model_dir: Path, folder: Path) -> dict:
    """`dataengine teacher serve` on a recipe whose teacher is a saved student (vLLM serves it): the served model's
    answer to one completion; then Ctrl-C, after which the command exits 0 and nothing answers on its port."""
    import signal

    import httpx

    from dataengine.teacher.server import free_port

    port = free_port("127.0.0.1")
    recipe = folder / "serve.yaml"
    vllm = f"{{port: {port}, enforce_eager: true, max_model_len: 512}}"
    recipe.write_text(MINIMAL.replace("model: builtin:smollm2-moe", f"model: {model_dir}\n  vllm: {vllm}"))
    serve = [sys.executable, "-m", "dataengine.cli", "teacher", "serve", str(recipe), "-o", str(folder / "serve-run")]
    # wide lines: the ready line names the model's folder, and rich wraps a pipe's output at 80 columns
    env = {**os.environ, "COLUMNS": "500"}
    proc = subprocess.Popen(
        serve, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        lines = []
        while (line := proc.stdout.readline()) and "Ctrl-C to stop" not in line:
            lines.append(line)
        assert "Ctrl-C to stop" in line, "serve exited before the server was ready:\n" + "".join(lines[-30:])
        url = f"http://127.0.0.1:{port}/v1"
        assert httpx.get(f"{url}/models", timeout=10).json()["data"][0]["id"] == str(model_dir)
        body = {"model": str(model_dir), "prompt": "The capital of France is", "max_tokens": 8}
        answer = httpx.post(f"{url}/completions", json=body, timeout=120).json()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/models", timeout=5)
        return answer
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------ a stand-in judge


def standin_score(prompt: str) -> int:
    """What the stand-in judge gives an answer whose question names no score: 1-5 by the answer's length."""
    return 1 + len(prompt.rsplit("Answer:\n", 1)[-1]) % 5


class JsonHandler(BaseHTTPRequestHandler):
    """A stand-in server's handler: JSON answers, no access log."""

    def _send(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


class StandinJudge(JsonHandler):
    """A judge endpoint on loopback (test_judge.py, test_preference.py). Scores a row by the digit its question
    asks for ("Rate me 4?", else `standin_score`); a question with "garbage" gets a verdict that is not JSON,
    one with "broken" a response that is not JSON at all. Records every request's body."""

    requests: list[dict] = []

    def do_GET(self):  # the health check
        self._send(200, b'{"data": []}')

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        prompt = body["messages"][0]["content"]
        if "broken" in prompt:
            self._send(200, b"<html>502 Bad Gateway</html>")
            return
        criteria = list(body["response_format"]["json_schema"]["schema"]["required"][1:])
        score = int(asked[1]) if (asked := re.search(r"(?:Rate me|Task) (\d)", prompt)) else standin_score(prompt)
        text = (
            "I think it is fine"
            if "garbage" in prompt
            else json.dumps({"rationale": "ok", **dict.fromkeys(criteria, score)})
        )
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        usage = {"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70}
        self._send(200, json.dumps({"id": "v", "choices": [choice], "usage": usage}).encode())


@contextlib.contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A stand-in server on loopback answering with `handler`, for as long as the block runs: its root URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()


@pytest.fixture
def judge_port():
    StandinJudge.requests = []
    with serving(StandinJudge) as url:
        yield int(url.rsplit(":", 1)[1])
