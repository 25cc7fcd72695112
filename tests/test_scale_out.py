"""Generation over several teacher endpoints and tasks (`teacher.endpoints`, `generate.tasks`), on datatrove's local,
Ray and Slurm executors, against the session's vLLM CPU server of the builtin teacher at two addresses: its own and
a TCP forwarder's (`Forwarder`). The engine sees two endpoints either way; a second vLLM server would cost a start
(about 40 s on a 2-core AVX2-only CPU) and fight the first for the same two cores.

The Slurm executor runs through the stand-ins of test_slurm_executor.py (datatrove's real launch scripts and
pickled pipeline); Ray is a local instance. Scoring runs on two tasks over the same pool. The last test closes the
forwarder: keep it last.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from datasets import load_dataset
from rich.console import Console

from dataengine.manifest import Manifest
from dataengine.recipe import parse_recipe
from dataengine.rows import read_rows, write_shards
from dataengine.score.stage import ScoreStage
from dataengine.stage import RunContext
from dataengine.teacher.server import teacher_pool
from tests.conftest import SHORT, run_command, served_requests, tiny_recipe
from tests.own_processes import OwnProcesses
from tests.test_slurm_executor import fake_slurm

pytestmark = pytest.mark.slow

SMALL_CACHE = {"VLLM_CPU_KVCACHE_SPACE": "1"}


def _recipe(folder: Path, *, endpoint: str | None = None, endpoints: list[str] = (), more: str = "", **kw) -> Path:
    """The tiny recipe, greedy and short (the tests compare which rows were made), with a pool and the generate
    block's executor settings in `more`."""
    path = tiny_recipe(folder, endpoint=endpoint, temperature=0.0, **SHORT | kw)
    text = path.read_text()
    if endpoints:
        text = text.replace(
            "  model: builtin:smollm2-moe\n", f"  model: builtin:smollm2-moe\n  endpoints: {list(endpoints)}\n"
        )
    path.write_text(
        text.replace("\ngenerate:\n", "\ngenerate:\n" + "".join(f"  {line}\n" for line in more.splitlines()))
    )
    return path


def _run(recipe: Path, run_dir: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(run_command(recipe, run_dir), capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _same_rows(run_dir: Path, single) -> None:
    rows = load_dataset(str(run_dir / "generated"), split="train")
    assert len(set(rows["id"])) == len(rows)  # no rollout twice
    assert sorted(rows["id"]) == sorted(single["id"])
    # each row is the rollout of the prompt its id names (ids hash the prompt and rollout, not the answer)
    asked = {r["id"]: r["instruction"] for r in single}
    assert all(asked[r["id"]] == r["instruction"] for r in rows)


def _vllm_servers(own: OwnProcesses) -> set[int]:
    """The vLLM API servers the test's own runs started (another job's on the same machine are not counted)."""
    return {p.pid for p in own() if "vllm.entrypoints.openai.api_server" in " ".join(p.info["cmdline"] or [])}


def test_generate_on_slurm_starts_a_server_in_each_task(tmp_path, own_processes):
    """No endpoints on Slurm: the task starts the teacher on its node and stops it when it ends."""
    bin_dir = fake_slurm(tmp_path / "bin")
    path = f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}"
    env = own_processes.env({**os.environ, "PATH": path, **SMALL_CACHE})
    run_dir = tmp_path / "run"
    recipe = _recipe(tmp_path, more="executor: slurm\nslurm: {partition: cpu, poll_s: 0.5}\ntasks: 1")
    _run(recipe, run_dir, env=env)
    rows = load_dataset(str(run_dir / "generated"), split="train")
    manifest = Manifest.read(run_dir / "generated")
    assert len(set(rows["id"])) == len(rows) == manifest.rows_out > 0
    assert manifest.rows_out + manifest.drops.get("empty_question", 0) == manifest.rows_in == 2 * 3 * 2 + 2
    work = run_dir / ".work" / "generate"
    assert "launch_pickled_pipeline" in (work / "logs" / "launch_script.slurm").read_text()
    assert "Application startup complete" in (work / "servers" / "teacher-00000.log").read_text()
    assert not (run_dir / ".work" / "teacher-server.log").exists()  # the run itself started no server
    assert own_processes.sessions, "the task's server did not carry the test's mark: nothing would be counted"
    assert not _vllm_servers(own_processes)  # the task's server ended with it


class Forwarder:
    """A second address for a running server: every connection to `base_url` is piped to `upstream` (host, port),
    both ways, byte for byte. Counts the HTTP requests it passed on (`requests`); `close()` ends the listener and
    every connection, as a lost node would: from then on a connection is refused."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream, self.requests, self.closed = upstream, 0, False
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: set[socket.socket] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # the listener was shut down
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:  # the server is gone: so is this connection
                client.close()
                continue
            with self.lock:
                if self.closed:  # accepted as close() ran
                    client.close()
                    server.close()
                    return
                self.sockets |= {client, server}
            threading.Thread(target=self._connection, args=(client, server), daemon=True).start()

    def _connection(self, client: socket.socket, server: socket.socket) -> None:
        answers = threading.Thread(target=self._pipe, args=(server, client, False), daemon=True)
        answers.start()
        self._pipe(client, server, True)
        answers.join()
        with self.lock:
            self.sockets -= {client, server}
        client.close()
        server.close()

    def _pipe(self, source: socket.socket, sink: socket.socket, asked: bool) -> None:
        tail = b""  # a request line may arrive split over two reads
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if asked:
                    with self.lock:
                        self.requests += (tail + data).count(b"POST /v1/")
                    tail = (tail + data)[-8:]  # shorter than the pattern: no request is counted twice
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with self.lock:
            self.closed = True
            # shut down, not only closed: a thread blocked in accept() on Linux wakes only then
            with contextlib.suppress(OSError):
                self.listener.shutdown(socket.SHUT_RDWR)
            self.listener.close()
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture(scope="module")
def servers(teacher_server):
    """The pool: the session's vLLM server of the builtin teacher, and the same server through a `Forwarder`."""
    host, port = teacher_server.base_url.removeprefix("http://").rsplit(":", 1)
    other = Forwarder((host, int(port)))
    yield [teacher_server, other]
    other.close()


@pytest.fixture(scope="module")
def single_run(servers, tmp_path_factory):
    """The reference: one endpoint, one task. Greedy, so that every run drops the same empty questions."""
    folder = tmp_path_factory.mktemp("single")
    run_dir = folder / "run"
    _run(_recipe(folder, endpoint=servers[0].base_url), run_dir)
    return load_dataset(str(run_dir / "generated"), split="train")


def test_two_tasks_over_two_endpoints_make_the_rows_of_one(servers, single_run, tmp_path):
    server, forwarder = servers
    served, forwarded = served_requests(server), forwarder.requests
    run_dir = tmp_path / "run"
    urls = [s.base_url for s in servers]
    _run(_recipe(tmp_path, endpoints=urls, more="tasks: 2\nworkers: 2"), run_dir)
    _same_rows(run_dir, single_run)
    # both addresses were asked: each task talks to its own (the forwarded requests reach the same server)
    forwarded = forwarder.requests - forwarded
    assert 0 < forwarded < served_requests(server) - served
    manifest = Manifest.read(run_dir / "generated")
    assert manifest.stats["tasks"] == 2
    work = run_dir / ".work" / "generate"
    assert sorted(p.name for p in (work / "logs" / "completions").iterdir()) == ["00000", "00001"]
    # each task process logs its rollouts to a file of its own (a pool worker may run both tasks)
    logged = [line for path in (work / "throughput").glob("*.tsv") for line in path.read_text().splitlines()]
    assert len(logged) == manifest.stats["prompts"]
    assert manifest.stats["teacher_tokens_per_second_timeline"]


def test_generate_on_a_local_ray_instance(servers, single_run, tmp_path):
    pytest.importorskip("ray")
    run_dir = tmp_path / "run"
    recipe = _recipe(tmp_path, endpoints=[s.base_url for s in servers], more="executor: ray\ntasks: 2\nworkers: 2")
    # datatrove's Ray executor joins a running cluster or starts a local one (ray.init() with no address)
    _run(recipe, run_dir)
    _same_rows(run_dir, single_run)


def test_scoring_on_two_tasks_over_two_endpoints_matches_one(servers, single_run, tmp_path):
    rows = [dict(r) for r in single_run]
    write_shards(rows, tmp_path / "run" / "curated")
    scored = {}
    for tasks, urls in ((1, servers[:1]), (2, servers)):
        pool = [s.base_url for s in urls]
        recipe = parse_recipe(
            "name: s\npipeline: curate\n"
            f"teacher: {{model: builtin:smollm2-moe, builtin: {{top_k: 1}}, endpoints: {pool}}}\n"
            "generate: {chat: {languages: [{code: en, quota: 1}]}}\ncurate: {}\n"
            f"score: {{top_k: 4, batch_size: 3, tasks: {tasks}, workers: {tasks}}}\n"
        )
        run_dir = tmp_path / "run"
        endpoints = teacher_pool(recipe.teacher, tmp_path / "teacher.log")
        ctx = RunContext(recipe, tmp_path, run_dir, Console(file=io.StringIO()), "r", endpoints[0], endpoints)
        out, work = tmp_path / f"scored-{tasks}", tmp_path / f"work-{tasks}"
        out.mkdir()
        work.mkdir()
        result = ScoreStage(recipe, tmp_path, "curated").run({"rows": run_dir / "curated"}, {"rows": out}, work, ctx)
        assert result.rows_out == len(rows) and result.stats["tasks"] == tasks
        scored[tasks] = {r["id"]: r for r in read_rows(out)}
    assert scored[1].keys() == scored[2].keys() == {r["id"] for r in rows}
    work = tmp_path / "work-2" / "logs" / "completions"
    assert sorted(p.name for p in work.iterdir()) == ["00000", "00001"]
    for row_id, one in scored[1].items():
        two = scored[2][row_id]
        assert len(one["teacher_topk_ids"]) == len(two["teacher_topk_ids"]) > 0
        # the same logprobs through either address, whatever else the server batched them with
        assert np.allclose(one["teacher_topk_logprobs"][0], two["teacher_topk_logprobs"][0], atol=0.05)


def test_a_dead_endpoint_fails_its_task_alone_and_the_rerun_resumes_it(servers, tmp_path):
    """Lose one endpoint mid-run: its task fails cleanly (a clear error, no traceback), the other task finishes;
    the rerun (here on the surviving endpoint) runs only the unfinished task, from its checkpoints."""
    alive, doomed = servers
    run_dir = tmp_path / "run"
    more = "tasks: 2\nworkers: 2"
    recipe = _recipe(tmp_path, endpoints=[alive.base_url, doomed.base_url], more=more, quota=2, chunk=1, concurrency=2)
    recipe.write_text(recipe.read_text().replace("  vllm:", "  recovery: {max_attempts: 1, backoff_s: 0}\n  vllm:", 1))
    proc = subprocess.Popen(run_command(recipe, run_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    raw = run_dir / ".work" / "generate" / "raw"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if sum(len(p.read_text().splitlines()) for p in raw.glob("00001_chunk_*.jsonl")) >= 1:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before the server could be killed; make it longer"
    doomed.close()  # its port and every connection through it gone, as a lost node's
    out, _ = proc.communicate(timeout=600)
    out = " ".join(out.split())  # rich wraps the error at the terminal's width
    assert proc.returncode == 1, out
    assert f"teacher endpoint {doomed.base_url} did not answer" in out and "run again to resume" in out
    assert "Traceback" not in out
    completions = run_dir / ".work" / "generate" / "logs" / "completions"
    assert sorted(p.name for p in completions.iterdir()) == ["00000"]  # the other task finished
    finished = {p: p.stat().st_mtime_ns for p in raw.glob("00000_chunk_*.jsonl")}

    # the rerun: the pool is the surviving server alone; the generate stage's key does not hold the endpoints
    recipe.write_text(recipe.read_text().replace(f", '{doomed.base_url}'", ""))
    _run(recipe, run_dir)
    rows = load_dataset(str(run_dir / "generated"), split="train")
    manifest = Manifest.read(run_dir / "generated")
    assert len(set(rows["id"])) == len(rows) == manifest.rows_out
    assert manifest.rows_out + manifest.drops.get("empty_question", 0) == manifest.rows_in == 2 * 3 * 2 + 2
    assert {p: p.stat().st_mtime_ns for p in raw.glob("00000_chunk_*.jsonl")} == finished  # task 0 did not rerun
