"""Run model-written Python out of process, with layered limits.

Never in-process. Each run gets:
- a fresh temporary directory as its working directory, and a scrubbed environment (no secrets);
- rlimits: CPU seconds, address space, file size, open files, and processes;
- a wall-clock timeout that kills the whole process group, and a cap on the output read back;
- no network, through a new network namespace (`unshare -n`) where the machine allows it;
- when we are root, the code runs as `nobody` (so the process limit counts and system files are
  read-only to it);
- a Python audit hook installed before the code runs that refuses process creation, sockets,
  ctypes, and writes outside the temporary directory.
The layers overlap on purpose: each one alone has known ways around it.
"""

from __future__ import annotations

import contextlib
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import cache

# Runs inside the sandboxed interpreter before the code: an audit hook that refuses what a unit test never needs.
_PREAMBLE = r"""
import os, sys
_root = os.path.realpath(os.getcwd())
_blocked = {"os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.kill", "os.killpg",
            "subprocess.Popen", "socket.connect", "socket.bind", "socket.sendto", "socket.getaddrinfo",
            "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "os.putenv", "os.unsetenv"}
_writes = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.symlink", "os.link",
           "os.truncate", "shutil.rmtree", "shutil.move", "shutil.copyfile"}
def _inside(path):
    try:
        path = os.fsdecode(path) if not isinstance(path, int) else None
    except Exception:
        return False
    return path is None or os.path.realpath(path).startswith(_root + os.sep) or os.path.realpath(path) == _root
def _hook(event, args):
    if event in _blocked:
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open" and args and args[0] is not None:
        mode, flags = (args[1] or "r"), (args[2] or 0)
        writing = any(c in str(mode) for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        if writing and not _inside(args[0]):
            raise PermissionError(f"sandbox: writing {args[0]!r} outside the working directory is not allowed")
    if event in _writes and args and not all(_inside(a) for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))):
        raise PermissionError(f"sandbox: {event} outside the working directory is not allowed")
sys.addaudithook(_hook)
del _hook
_path = sys.argv[1]
sys.argv = sys.argv[1:]
with open(_path) as _f:
    _code = compile(_f.read(), _path, "exec")
exec(_code, {"__name__": "__main__", "__file__": _path})
"""


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 512
    max_output_bytes: int = 16_384
    max_processes: int = 16
    max_file_mb: int = 16
    require_network_isolation: bool = False


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    returncode: int | None
    runtime_s: float
    output: str  # stdout+stderr, truncated to max_output_bytes
    reason: str  # "passed", "failed", "timeout", "output_limit", "error"


@cache
def network_isolation() -> list[str]:
    """The command prefix that gives a child no network, or [] where the machine does not allow it."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return []
    for prefix in ([unshare, "-n"], [unshare, "-r", "-n"]):  # as root / with an unprivileged user namespace
        if subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    return []


@cache
def _drop_privileges() -> list[str]:
    """As root, run the code as nobody: rlimits on processes then apply, and system files are not writable."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        return []
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--"]


def isolation_warning(limits: SandboxLimits) -> str | None:
    if not network_isolation():
        message = "network isolation unavailable (unshare -n failed): sandboxed code can reach the network"
        if limits.require_network_isolation:
            raise RuntimeError(message + "; curate.code.require_network_isolation is set")
        return message
    return None


def _limit(limits: SandboxLimits):
    def apply() -> None:
        os.setsid()
        mem = limits.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
        size = limits.max_file_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_processes, limits.max_processes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def run_python(code: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run `code` as a script in the sandbox; passed means exit status 0 within the limits."""
    isolation_warning(limits)  # raises when isolation is required but unavailable; the stage shows the warning
    with tempfile.TemporaryDirectory(prefix="dataengine-sandbox-") as tmp:
        os.chmod(tmp, 0o777)  # writable by nobody, who runs the code when we are root
        script = os.path.join(tmp, "main.py")
        with open(script, "w") as fh:
            fh.write(code)
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
        cmd = [*network_isolation(), *_drop_privileges(), sys.executable, "-I", "-c", _PREAMBLE, script]
        started = time.monotonic()
        proc = subprocess.Popen(
            cmd, cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            preexec_fn=_limit(limits),
        )  # fmt: skip
        output, reason = _read_capped(proc, limits, started)
        runtime = time.monotonic() - started
        text = output.decode("utf-8", errors="replace")
        if reason is None:
            reason = "passed" if proc.returncode == 0 else "failed"
        return SandboxResult(reason == "passed", proc.returncode, round(runtime, 3), text, reason)


def _read_capped(proc: subprocess.Popen, limits: SandboxLimits, started: float) -> tuple[bytes, str | None]:
    """Read output until exit, the wall-clock timeout, or the output cap; kill the group on the last two."""
    chunks, size, reason = [], 0, None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            left = limits.timeout_s - (time.monotonic() - started)
            if left <= 0:
                reason = "timeout"
                break
            if not sel.select(timeout=min(left, 0.5)):
                if proc.poll() is not None:
                    break
                continue
            data = os.read(proc.stdout.fileno(), 65536)
            if not data:
                break
            chunks.append(data)
            size += len(data)
            if size > limits.max_output_bytes:
                reason = "output_limit"
                break
    if reason is not None:
        _kill_group(proc)
    proc.wait()
    proc.stdout.close()
    if reason is None and proc.returncode is not None and proc.returncode < 0:
        # killed by the kernel: SIGXCPU for the CPU limit, SIGKILL for memory or CPU hard limit
        reason = "timeout" if -proc.returncode in (signal.SIGXCPU, signal.SIGKILL) else "failed"
    return b"".join(chunks)[: limits.max_output_bytes], reason


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
