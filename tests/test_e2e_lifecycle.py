"""End to end with the real builtin teacher: a run owns the vLLM tree it starts and ends it whatever
ends the run, and survives its teacher dying. One run folder goes through SIGTERM, SIGKILL, and a
killed teacher server in turn; each step resumes the last. Slow (four vLLM starts); CI runs it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from datasets import load_dataset

from dataengine.manifest import Manifest
from tests.conftest import INTERRUPTIBLE, generate_requests, run_command, tiny_recipe
from tests.own_processes import OwnProcesses

pytestmark = pytest.mark.slow


def _done(run_dir: Path) -> int:
    work = run_dir / ".work" / "generate"
    files = list((work / "checkpoints").rglob("chunk_*.jsonl")) + list((work / "raw").glob("*.jsonl"))
    return sum(len(p.read_text().splitlines()) for p in files if p.exists())


def _wait_until(proc: subprocess.Popen, condition, timeout: float = 400) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if condition():
            return
        time.sleep(0.05)  # often: the run asks 14 rollouts in all, and each step must stop it with some left
    if proc.poll() is not None:
        out, err = proc.communicate()  # what the step kept of the run's output (None where it did not)
        kept = (out or "") + (err or "")
        raise AssertionError(f"the run ended (exit {proc.returncode}) before the step could interrupt it: {kept}")
    raise AssertionError("timed out waiting for the run")


def _vllm_processes(own: OwnProcesses) -> set[int]:
    """vLLM's API servers, EngineCores and Workers (by command line or process title), and their keepers, that the
    test's own runs started: another job's on the same machine are not the test's to count."""
    found = set()
    for proc in own():
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "vllm.entrypoints" in cmdline or "VLLM::" in cmdline or "dataengine.teacher.keeper" in cmdline:
            found.add(proc.pid)
    return found


def _holding_files_in(folder: Path) -> set[int]:
    """Processes with a file under `folder` open (what a leftover writer would be)."""
    holders = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd).startswith(str(folder)):
                    holders.add(int(proc.name))
                    break
        except OSError:
            continue
    return holders


def _nothing_of_the_run_left(run_dir: Path, own: OwnProcesses, within: float = 15) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not _vllm_processes(own) and not _holding_files_in(run_dir):
            return True
        time.sleep(0.5)
    return False


@pytest.fixture
def start(own_processes):
    """Popen for the test's runs, marked as its own (`own_processes`); any still running when the test ends (it
    failed midway) is killed."""
    started: list[subprocess.Popen] = []

    def popen(*args, **kwargs) -> subprocess.Popen:
        started.append(subprocess.Popen(*args, env=own_processes.env(), **kwargs))
        return started[-1]

    yield popen
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_term_kill_and_a_dead_teacher_leave_nothing_behind_and_lose_nothing(
    tmp_path, interruptible_reference, start, own_processes
):
    expected, asked = interruptible_reference  # the same recipe, uninterrupted, on the session's server
    recipe = tiny_recipe(tmp_path, **INTERRUPTIBLE)  # no endpoint: each run starts (and owns) its vLLM server
    # the restart of step 3 after half a second, not teacher.recovery's default 5; a 1 GB KV cache (46k tokens of
    # the tiny teacher, for two rollouts at a time), not the engine's 4: a start is ready 2 s sooner (21.7 s, not 23.7)
    vllm = "  vllm: {enforce_eager: true, max_model_len: 1024}"
    owned = "  recovery: {backoff_s: 0.5}\n" + vllm[:-1] + ', env: {VLLM_CPU_KVCACHE_SPACE: "1"}}'
    assert vllm in recipe.read_text()
    recipe.write_text(recipe.read_text().replace(vllm, owned))
    run_dir = tmp_path / "run"
    assert not _vllm_processes(own_processes)  # the session's server (the reference's) is not the runs'

    # 1. SIGTERM mid-generation: exit 143, one line on how to resume, the server tree gone
    proc = start(run_command(recipe, run_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_until(proc, lambda: _done(run_dir) >= 2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "terminated" in stderr and "run the same command to resume" in stderr
    assert "Traceback" not in stderr
    assert own_processes.sessions, "the run's server did not carry the test's mark: nothing would be counted"
    assert _nothing_of_the_run_left(run_dir, own_processes, within=5)
    assert Manifest.read(run_dir / "generated") is None
    after_term = _done(run_dir)

    # 2. SIGKILL mid-generation (the OOM killer, a preempted node): within seconds nothing of the run is
    #    left: no vLLM process, no forked copy of the engine holding the run's files open
    proc = start(run_command(recipe, run_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_until(proc, lambda: _done(run_dir) >= after_term + 2)
    proc.kill()
    proc.wait()
    assert _nothing_of_the_run_left(run_dir, own_processes), (
        _vllm_processes(own_processes),
        _holding_files_in(run_dir),
    )
    after_kill = _done(run_dir)

    # 3. the teacher's API server is killed mid-generation: the same run restarts it once and finishes
    proc = start(run_command(recipe, run_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    record = run_dir / ".work" / "teacher-server.json"
    _wait_until(proc, lambda: record.is_file() and _done(run_dir) >= after_kill + 2)
    keeper = psutil.Process(json.loads(record.read_text())["pid"])
    keeper.children()[0].kill()  # the API server; its EngineCore (and Worker, if any) are the keeper's to end
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]
    assert "restart 1 of 3" in output and "restart 2 of" not in output
    assert "Task exception was never retrieved" not in output
    manifest = Manifest.read(run_dir / "generated")
    assert manifest.stats["teacher_restarts"] == 1
    ids = load_dataset(str(run_dir / "generated"), split="train")["id"]
    assert len(ids) == len(set(ids)) and sorted(ids) == expected
    # the pass after the restart asked only what was left (a killed run's own resume is
    # tests/test_e2e_generate.py's)
    assert 0 < generate_requests(run_dir) < asked
    assert _nothing_of_the_run_left(run_dir, own_processes, within=5)
