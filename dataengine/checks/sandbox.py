"""Run model-written Python out of process, inside a real process boundary, with layered limits.

Never in-process. The boundary is bubblewrap (`bwrap`, what Flatpak uses): new user, pid, net, ipc
and uts namespaces, `--die-with-parent`, `--new-session`, no capabilities, a read-only view of only
the interpreter and /usr, a fresh tmpfs as the working folder and a /proc of its own pid namespace.
When the sample's main process ends, the namespace's init ends and the kernel kills every process
the sample started, however it started them (PEP 578: audit hooks are not a sandbox; a direct
`_posixsubprocess.fork_exec` never raises an audit event). On top of that boundary each run keeps:
- the base interpreter's standard library only (`-I -S`: no site-packages, no virtualenv);
- a scrubbed environment (no secrets);
- rlimits: CPU seconds, address space, file size, open files, and processes;
- a wall-clock timeout that kills the whole process group, and a cap on the output read back;
- when we are root, the code runs as `nobody` (so the process limit counts);
- a Python audit hook installed before the code runs that refuses process creation, sockets,
  ctypes, and writes outside the working folder.
Where bwrap cannot run (no bwrap, or no user namespaces), today's layers alone remain: `unshare -n`
for the network and a temporary folder on the host, with one warning line;
`curate.code.require_isolation` turns that into an error.
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
from pathlib import Path

from dataengine.recipe import CodeCheckConfig

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
    require_isolation: bool = False

    @classmethod
    def of(cls, code: CodeCheckConfig, timeout_s: float | None = None) -> SandboxLimits:
        """The limits of the recipe's `curate.code` block (another wall clock where given: evaluation's)."""
        return cls(
            timeout_s=code.timeout_s if timeout_s is None else timeout_s,
            cpu_s=code.cpu_s,
            memory_mb=code.memory_mb,
            max_output_bytes=code.max_output_bytes,
            max_processes=code.max_processes,
            require_isolation=code.require_isolation,
        )


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    returncode: int | None
    runtime_s: float
    output: str  # stdout+stderr, truncated to max_output_bytes
    reason: str  # "passed", "failed", "timeout", "output_limit", "error"


WORKDIR = "/sandbox"  # the working folder inside the bwrap boundary (a tmpfs)


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


def _interpreter() -> str:
    """The base interpreter, not a virtualenv's: the sandbox sees its prefix only, never the project's venv."""
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def _system_view() -> list[str]:
    """Read-only binds of what the interpreter needs: /usr (with /bin, /lib... as on the host) and its prefix."""
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    prefix = Path(os.path.realpath(sys.base_prefix))
    if not prefix.is_relative_to("/usr"):
        # only the prefix itself is visible (pyenv's lives under /root): its parents are empty, traversable folders
        for parent in reversed(prefix.parents[:-1]):
            args += ["--perms", "0755", "--dir", str(parent)]
        args += ["--ro-bind", str(prefix), str(prefix)]
    return args + ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]


def bwrap_command(script: str, memory_mb: int) -> list[str]:
    """The command up to the interpreter: bwrap with `script` (a host file) read-only in a fresh tmpfs.

    As root, bwrap needs no user namespace: it keeps only the capability to change user, and `setpriv`
    inside the boundary becomes `nobody`, a real unprivileged user whom RLIMIT_NPROC counts (a user
    namespace would map the sandbox to root outside, which that limit exempts). As anyone else, bwrap
    makes a user namespace and the code runs as the caller, as it did before bwrap."""
    as_root = os.geteuid() == 0
    return [
        "bwrap",
        *([] if as_root else ["--unshare-user"]),
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        *(["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"] if as_root else []),
        *_system_view(),
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        # the working folder lives in memory, so it counts against the run's memory budget
        "--size",
        str(memory_mb * 1024 * 1024),
        "--perms",
        "01777",
        "--tmpfs",
        WORKDIR,
        "--ro-bind",
        script,
        f"{WORKDIR}/main.py",
        "--chdir",
        WORKDIR,
        "--",
        *(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--"] if as_root else []),
    ]


@cache
def bwrap_problem() -> str | None:
    """Why the bwrap boundary cannot run here, or None when it can (probed once, as the sandbox will run it)."""
    if shutil.which("bwrap") is None:
        return "bwrap not found: apt-get install bubblewrap"
    with tempfile.TemporaryDirectory(prefix="dataengine-probe-") as tmp:
        done = _start(tmp, "pass\n", SandboxLimits(), boundary=True)
        err = done.communicate()[0].decode(errors="replace").strip()
    if done.returncode != 0:
        return f"bwrap cannot start a sandbox here: {err[-300:] or f'exit {done.returncode}'}"
    return None


def isolation_warning(limits: SandboxLimits) -> str | None:
    """One line saying which layer is missing, or None with the full boundary; raises when isolation is required."""
    if (problem := bwrap_problem()) is None:
        return None
    message = f"sandbox without its process boundary ({problem}); only rlimits and the audit hook contain samples"
    if not network_isolation():
        message += ", and sandboxed code can reach the network (unshare -n failed)"
    if limits.require_isolation:
        raise RuntimeError(message + "; curate.code.require_isolation is set")
    return message


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
        started = time.monotonic()
        proc = _start(tmp, code, limits, boundary=bwrap_problem() is None)
        output, reason = _read_capped(proc, limits, started)
        runtime = time.monotonic() - started
        text = output.decode("utf-8", errors="replace")
        if reason is None:
            reason = "passed" if proc.returncode == 0 else "failed"
        return SandboxResult(reason == "passed", proc.returncode, round(runtime, 3), text, reason)


def _start(tmp: str, code: str, limits: SandboxLimits, boundary: bool) -> subprocess.Popen:
    """Start `code` as tmp/main.py: inside bwrap (which sees the script only) or, without it, in tmp itself."""
    os.chmod(tmp, 0o777)  # writable by nobody, who runs the code when we are root (the fallback's workdir)
    script = os.path.join(tmp, "main.py")
    with open(script, "w") as fh:
        fh.write(code)
    os.chmod(script, 0o644)
    # without bwrap: `unshare -n` needs our privileges, then `setpriv` drops them
    isolate = bwrap_command(script, limits.memory_mb) if boundary else [*network_isolation(), *_drop_privileges()]
    workdir = WORKDIR if boundary else tmp
    env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
    return subprocess.Popen(
        [*isolate, _interpreter(), "-I", "-S", "-c", _PREAMBLE, f"{workdir}/main.py"],
        cwd=tmp,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=_limit(limits),
    )


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
    # killed by the kernel: SIGXCPU for the CPU limit, SIGKILL for memory or CPU hard limit; bwrap reports
    # its child's death by signal N as exit status 128 + N
    signalled = -proc.returncode if proc.returncode < 0 else proc.returncode - 128
    if reason is None and signalled in (signal.SIGXCPU, signal.SIGKILL):
        reason = "timeout"
    return b"".join(chunks)[: limits.max_output_bytes], reason


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
