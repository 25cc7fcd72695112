"""The processes a test's own runs started, and no one else's: a machine may run other jobs beside the tests (another
checkout's tests, a benchmark), with vLLM servers of their own, so a test that counts every vLLM process on it fails.

The test starts each run with `env()`: its environment plus a mark unique to the test. A process carries its
environment over to every process it starts, and keeps it when its parent dies and it is re-parented, so the mark
finds the run's processes wherever they ended up. All but one kind: a process that sets its title (vLLM's
EngineCore and Workers do, through setproctitle) overwrites the memory /proc/<pid>/environ reads, so its mark is
gone. Those are found by session: the keeper starts each server in a session of its own, which every process of
the server's tree stays in (a process cannot join another session, only start one), re-parented or not. So the
processes of a session led by a marked process are the run's too; its leader must be seen alive once to learn the
session, which a thread does every WATCH_S while the test runs (`with OwnProcesses() as own`), and every look.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Mapping

import psutil

MARK = "DATAENGINE_TEST_MARK"
WATCH_S = 0.5  # how often the watcher looks for sessions the runs start (a vLLM server takes seconds to start)


class OwnProcesses:
    """`env()` for the runs a test starts; `own()`: the live processes those runs started (re-parented or not)."""

    def __init__(self) -> None:
        self.mark = uuid.uuid4().hex
        self._sessions: dict[int, float] = {}  # session id -> its marked leader's start time
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def env(self, env: Mapping[str, str] | None = None) -> dict[str, str]:
        """`env` (by default this process's environment) with the test's mark: the environment of a run it starts."""
        return {**(os.environ if env is None else env), MARK: self.mark}

    @property
    def sessions(self) -> set[int]:
        """The sessions seen started by a marked process (a server's keeper starts one): none says that no run's
        server carried the mark, and that counting its processes would find none whatever was left."""
        with self._lock:
            return set(self._sessions)

    def __call__(self) -> list[psutil.Process]:
        """The live processes (not zombies) whose environment carries the mark, and those of the sessions that a
        process carrying it started; their `info` holds their cmdline."""
        seen: list[tuple[psutil.Process, int, bool]] = []
        for proc in psutil.process_iter(["cmdline", "create_time", "status"]):
            if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            try:
                sid = os.getsid(proc.pid)
                marked = proc.environ().get(MARK) == self.mark
            except psutil.AccessDenied:  # another user's: never marked, and in none of our sessions
                continue
            except (psutil.Error, OSError):  # it ended meanwhile
                continue
            seen.append((proc, sid, marked))
        started = {proc.pid: proc.info["create_time"] for proc, _, _ in seen}
        with self._lock:
            for proc, sid, marked in seen:
                if marked and sid == proc.pid:
                    self._sessions[sid] = proc.info["create_time"]
            sessions = dict(self._sessions)
        return [proc for proc, sid, marked in seen if marked or _member(proc, sid, sessions, started)]

    def __enter__(self) -> OwnProcesses:
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_S):
            self()


def _member(proc: psutil.Process, sid: int, sessions: dict[int, float], started: dict[int, float]) -> bool:
    """`proc` is in a session a marked process led: not a later session whose leader got the same pid."""
    if sid not in sessions:
        return False
    leader = sessions[sid]
    if sid in started and abs(started[sid] - leader) > 0.01:  # a live leader, not ours: the pid was reused
        return False
    return proc.info["create_time"] >= leader - 0.01
