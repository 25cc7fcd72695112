"""Hostile model-written code is contained by the sandbox, layer by layer."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dataengine.curate.sandbox import SandboxLimits, network_isolation, run_python

LIMITS = SandboxLimits(timeout_s=5, cpu_s=3, memory_mb=256, max_output_bytes=4096)


def test_passing_and_failing_code():
    assert run_python("def add(a, b):\n    return a + b\nassert add(2, 2) == 4", LIMITS).passed
    failed = run_python("assert 1 == 2, 'nope'", LIMITS)
    assert not failed.passed and failed.reason == "failed" and "AssertionError: nope" in failed.output


def test_infinite_loop_is_stopped_by_cpu_limit():
    r = run_python("while True:\n    pass", LIMITS)
    assert not r.passed and r.reason == "timeout" and r.runtime_s < LIMITS.timeout_s + 2


def test_sleeping_code_is_stopped_by_wall_clock():
    r = run_python("import time\ntime.sleep(60)", SandboxLimits(timeout_s=2))
    assert r.reason == "timeout" and r.runtime_s < 5


def test_fork_bomb_is_contained():
    r = run_python("import os\nwhile True:\n    os.fork()", LIMITS)
    assert not r.passed and "not allowed" in r.output


def test_subprocess_is_refused():
    r = run_python("import subprocess\nsubprocess.run(['ls', '/'])", LIMITS)
    assert not r.passed and "subprocess.Popen is not allowed" in r.output


def test_huge_output_is_capped():
    r = run_python("while True:\n    print('x' * 1000)", LIMITS)
    assert r.reason == "output_limit" and len(r.output) <= LIMITS.max_output_bytes


def test_memory_limit():
    r = run_python("x = bytearray(1024 ** 3)", LIMITS)
    assert not r.passed and "MemoryError" in r.output


@pytest.mark.parametrize("target", ["/tmp/dataengine-escape.txt", "../dataengine-escape.txt"])
def test_file_writes_outside_the_temp_dir_are_refused(target):
    r = run_python(f"open({target!r}, 'w').write('x')", LIMITS)
    assert not r.passed and "outside the working directory" in r.output
    assert not Path("/tmp/dataengine-escape.txt").exists()


def test_file_writes_inside_the_temp_dir_work():
    r = run_python("open('scratch.txt', 'w').write('ok')\nassert open('scratch.txt').read() == 'ok'", LIMITS)
    assert r.passed


def test_environment_secrets_are_not_visible(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    r = run_python("import os\nassert 'HF_TOKEN' not in os.environ, 'leak'\nprint(sorted(os.environ))", LIMITS)
    assert r.passed and "hf_secret" not in r.output


def test_ctypes_escape_is_refused():
    r = run_python("import ctypes\nctypes.CDLL(None).system(b'true')", LIMITS)
    assert not r.passed and "ctypes" in r.output


@pytest.fixture
def loopback_server():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    threading.Thread(target=lambda: server.accept(), daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def test_network_access_is_refused(loopback_server):
    code = f"import socket\nsocket.create_connection(('127.0.0.1', {loopback_server}), timeout=2)"
    r = run_python(code, LIMITS)
    assert not r.passed and "not allowed" in r.output


@pytest.mark.skipif(not network_isolation(), reason="unshare -n is not available on this machine")
def test_network_namespace_alone_blocks_the_host(loopback_server):
    """The namespace layer on its own, without the audit hook: the host's loopback is unreachable."""
    code = f"import socket\nsocket.create_connection(('127.0.0.1', {loopback_server}), timeout=2)"
    done = subprocess.run([*network_isolation(), sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode != 0 and ("ConnectionRefused" in done.stderr or "unreachable" in done.stderr.lower())


@pytest.mark.skipif(os.geteuid() != 0, reason="the process limit applies through setuid to nobody, as root")
def test_process_limit_alone_stops_a_fork_bomb():
    """The rlimit layer on its own, without the audit hook: forking stops at max_processes."""
    from dataengine.curate.sandbox import _drop_privileges, _limit

    code = (
        "import os, time\n"
        "pids = []\n"
        "try:\n"
        "    for _ in range(200):\n"
        "        pid = os.fork()\n"
        "        if pid == 0:\n"
        "            time.sleep(3)\n"
        "            os._exit(0)\n"
        "        pids.append(pid)\n"
        "except OSError:\n"
        "    print('limited at', len(pids))\n"
    )
    limits = SandboxLimits(max_processes=8)
    done = subprocess.run(
        [*_drop_privileges(), sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=_limit(limits),
        cwd="/tmp", timeout=30,
    )  # fmt: skip
    assert "limited at" in done.stdout
    assert int(done.stdout.split()[-1]) < 8
