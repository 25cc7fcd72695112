"""Hostile model-written code is contained by the sandbox, layer by layer."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dataengine.checks import sandbox
from dataengine.checks.sandbox import SandboxLimits, network_isolation, run_python

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
    from dataengine.checks.sandbox import _drop_privileges, _limit

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
        [*_drop_privileges(), sys.executable, "-c", code],
        capture_output=True,
        text=True,
        preexec_fn=_limit(limits),
        cwd="/tmp",
        timeout=30,
    )
    assert "limited at" in done.stdout
    assert int(done.stdout.split()[-1]) < 8


# ---------------------------------------------------------------- the bwrap process boundary

MARK = "dataengine-escapee"


def _need_bwrap() -> None:
    if (problem := sandbox.bwrap_problem()) is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{problem}: `make test` installs Debian's bubblewrap package")
        pytest.skip(problem)


def _escape(payload: str, shell: bool = False) -> str:
    """Sample code that starts `payload` (Python, or shell with `shell`) through `_posixsubprocess.fork_exec`
    in a new session: no audit event is raised (the hook never sees it), the child is outside the process
    group that a timeout kills, and the payload runs without any audit hook. The child says it runs."""
    if shell:
        argv = f"['/bin/sh', '-c', 'echo child running; ' + {payload!r} + '; true', {MARK!r}]"
    else:
        argv = f"[sys.executable, '-S', '-c', \"print('child running', flush=True)\\n\" + {payload!r}, {MARK!r}]"
    return (
        "import _posixsubprocess, os, sys\n"
        f"argv = {argv}\n"
        "r, w = os.pipe()\n"
        "_posixsubprocess.fork_exec([a.encode() for a in argv], [argv[0].encode()], True, (w,), None, None,\n"
        "    -1, -1, -1, -1, -1, -1, r, w, True, True, -1, None, None, None, -1, None, False)\n"
        "import time; time.sleep(1)\n"
    )


ESCAPES = {
    "fork_exec with a new session": "import time; time.sleep(60)",
    "os.posix_spawn": (
        "import os, sys, time\n"
        f"os.posix_spawn(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', {MARK!r}], {{}})\n"
        "time.sleep(60)"
    ),
    "double fork with setsid": (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(60)\n"
        "    os._exit(0)\n"
        "time.sleep(60)"
    ),
    "thread bomb": (
        "import threading, time\n"
        "for _ in range(10000):\n"
        "    try:\n"
        "        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
        "    except Exception:\n"
        "        break\n"
        "time.sleep(60)"
    ),
}


def _processes(marker: str | None = None, uid: int | None = None) -> list[int]:
    """Pids on this machine whose command line holds `marker`, or that run as `uid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            marked = marker is not None and marker.encode() in (entry / "cmdline").read_bytes()
            if marked or (uid is not None and entry.stat().st_uid == uid):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _gone(find, timeout: float = 5.0) -> list[int]:
    """What `find` still finds once the kernel has had `timeout` seconds to tear a killed namespace down (its
    processes leave /proc a few milliseconds after its init, not at once)."""
    deadline = time.monotonic() + timeout
    while (left := find()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def test_no_process_a_sample_starts_outlives_its_run():
    """Every escape route out of the audit hook and the process group, in a batch: nothing survives."""
    _need_bwrap()
    nobody_before = set(_processes(uid=65534))
    for name, payload in ESCAPES.items():
        r = run_python(_escape(payload), SandboxLimits(timeout_s=10, cpu_s=5, memory_mb=512, max_processes=64))
        assert "child running" in r.output, (name, r.output)  # the route works, so the boundary is what stops it
        assert _gone(lambda: _processes(MARK)) == [], name
    # no new process of the sandbox user
    assert _gone(lambda: sorted(set(_processes(uid=65534)) - nobody_before)) == []


def test_the_escape_route_is_real_without_the_boundary(monkeypatch):
    """The same fork_exec child outlives a run with only today's layers (why the boundary exists)."""
    monkeypatch.setattr(sandbox, "bwrap_problem", lambda: "off for this test")
    # a shell, not Python: without the boundary nobody may not be able to exec a Python under /root
    r = run_python(_escape("sleep 20", shell=True), SandboxLimits(timeout_s=10, max_processes=64))
    escaped = _processes(MARK)
    try:
        assert "child running" in r.output and escaped
    finally:
        for pid in escaped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_timed_out_sample_takes_its_children_with_it():
    _need_bwrap()
    r = run_python(_escape("import time; time.sleep(60)") + "time.sleep(60)\n", SandboxLimits(timeout_s=3))
    assert r.reason == "timeout" and "child running" in r.output
    assert _gone(lambda: _processes(MARK)) == []  # the kernel ends the namespace as its init goes


def test_the_engine_environment_is_not_readable_through_proc(monkeypatch):
    _need_bwrap()
    monkeypatch.setenv("HF_TOKEN", "hf_secret_in_the_engine")
    code = (
        "import os\n"
        "seen = []\n"
        f"for pid in [{os.getpid()}, {os.getppid()}] + [p for p in os.listdir('/proc') if p.isdigit()]:\n"
        "    try:\n"
        "        seen.append(open(f'/proc/{pid}/environ', 'rb').read())\n"
        "    except OSError:\n"
        "        pass\n"
        "print(b''.join(seen))\n"
    )
    r = run_python(code, LIMITS)
    assert r.passed and "hf_secret" not in r.output


def test_host_files_are_not_visible(tmp_path):
    """Only /usr and the interpreter are there: not $HOME's files, /root, the checkout, the host's /tmp."""
    _need_bwrap()
    secret = Path.home() / f".dataengine-sandbox-secret-{os.getpid()}"
    secret.write_text("secret")
    checkout = Path(__file__).resolve().parents[1] / "README.md"
    host_tmp = tmp_path / "host.txt"
    host_tmp.write_text("host")
    try:
        for path in (secret, checkout, host_tmp, Path("/etc/passwd")):
            r = run_python(f"print(open({str(path)!r}).read())", LIMITS)
            assert not r.passed and ("FileNotFoundError" in r.output or "PermissionError" in r.output), path
        r = run_python("import os\nprint(sorted(os.listdir('/')))", LIMITS)
        assert r.passed and "'work'" not in r.output and "'home'" not in r.output and "'tmp'" not in r.output
    finally:
        secret.unlink()


@pytest.mark.parametrize("where", ["tmp", "home", "checkout"])
def test_writes_never_reach_the_host(where, tmp_path):
    """The audit hook would refuse these; the payload runs in a child without it, so only the boundary stands."""
    _need_bwrap()
    target = {
        "tmp": Path("/tmp") / f"dataengine-escape-{os.getpid()}.txt",
        "home": Path.home() / f"dataengine-escape-{os.getpid()}.txt",
        "checkout": Path(__file__).resolve().parents[1] / f"dataengine-escape-{os.getpid()}.txt",
    }[where]
    payload = (
        f"import os\ntry:\n    os.makedirs({str(target.parent)!r}, exist_ok=True)\n"
        f"    open({str(target)!r}, 'w').write('x')\nexcept OSError as e:\n    print(e)"
    )
    r = run_python(_escape(payload), LIMITS)
    assert "child running" in r.output
    assert not target.exists()


def test_the_namespace_has_no_network(loopback_server):
    """The boundary alone, from a child without the audit hook: the host's loopback is unreachable."""
    _need_bwrap()
    payload = (
        "import socket, sys\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {loopback_server}), timeout=2)\n"
        "    open('/sandbox/verdict', 'w').write('connected')\n"
        "except OSError as e:\n"
        "    open('/sandbox/verdict', 'w').write('refused')\n"
    )
    code = _escape(payload) + "time.sleep(3)\nprint(open('verdict').read())\n"
    r = run_python(code, SandboxLimits(timeout_s=10))
    assert r.passed and r.output.strip().endswith("refused"), r.output


def test_without_bwrap_the_fallback_warns_or_fails_when_isolation_is_required(monkeypatch):
    monkeypatch.setattr(sandbox, "bwrap_problem", lambda: "bwrap not found: apt-get install bubblewrap")
    warning = sandbox.isolation_warning(LIMITS)
    assert warning is not None and "bwrap not found" in warning
    assert run_python("print('still runs')", LIMITS).passed
    with pytest.raises(RuntimeError, match="curate.code.require_isolation"):
        run_python("print(1)", SandboxLimits(require_isolation=True))


def test_the_benign_case_passes_inside_the_boundary():
    _need_bwrap()
    r = run_python("import json, os\nassert os.getcwd() == '/sandbox'\nprint(json.dumps({'ok': True}))", LIMITS)
    assert r.passed and '{"ok": true}' in r.output
