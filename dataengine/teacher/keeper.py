"""Ties a server's whole process tree to its owner: `python -m dataengine.teacher.keeper OWNER_PID -- CMD...`.

vLLM's API server starts an EngineCore process, which starts a Worker (on a small CPU machine the engine has the
EngineCore run the model itself: hardware.py). A parent-death signal on the
API server alone is not enough: when the API server is killed, its EngineCore and Worker live on
under pid 1 (measured: the worker kept 5.5 GB, and both ignored SIGTERM). The keeper sits between
the owner and the server: it gets SIGTERM when the owner dies (even by SIGKILL), it is a child
subreaper so that orphans of a dead server become its children, and whenever it stops (owner gone,
SIGTERM/SIGINT, or the server exiting on its own) it ends every descendant: SIGTERM to the server
for a clean shutdown, then SIGKILL to whatever is left after the grace period. Its exit status is
the server's. Written here because the ready-made tools each miss one part: `tini -s -p` does not
end the rest of the tree when its child exits, and a pid namespace (bwrap, `unshare -p`) needs user
namespaces, which GPU clusters often disable.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import psutil

from dataengine.lifetime import become_subreaper, die_with_parent

GRACE_S = 5.0


def end_tree(server: subprocess.Popen, grace_s: float = GRACE_S) -> None:
    """SIGTERM the server, wait up to `grace_s`, then SIGKILL every descendant of this process and reap them."""
    if server.poll() is None:
        server.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=grace_s)
    left = psutil.Process().children(recursive=True)
    for proc in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(left, timeout=grace_s)
    while True:  # reap re-parented orphans that psutil did not wait for
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                break
        except ChildProcessError:
            break


def main(argv: list[str]) -> int:
    owner, separator, *cmd = argv
    if separator != "--" or not cmd:
        raise SystemExit("usage: python -m dataengine.teacher.keeper OWNER_PID -- CMD...")
    die_with_parent(signal.SIGTERM, int(owner))
    become_subreaper()
    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    server = subprocess.Popen(cmd)
    while server.poll() is None and not stopping:
        time.sleep(0.2)
    code = server.returncode
    end_tree(server)
    if code is None:
        return 128 + stopping[0]
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
