"""Whatever a run starts ends with it: the keeper ends a server's whole tree, forks die with their parent.

The "server" here is a stand-in process tree shaped like vLLM's (an API server whose child ignores
SIGTERM, as EngineCore does); the real vLLM tree is killed end to end in test_e2e_lifecycle.py. Each test
counts only the processes it started (`own_processes`, by a mark in their environment): another job on the
machine may run the same tests beside it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from dataengine.teacher.server import stop_recorded
from tests.own_processes import OwnProcesses

LABEL = "dataengine-tree-under-test"  # on the tree's command lines: a stranger with the same one is not the tree

# an "API server" that ignores SIGTERM and starts an "EngineCore" that ignores it too
TREE = [
    sys.executable,
    "-c",
    "import signal, subprocess, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "subprocess.Popen([sys.executable, '-c', 'import signal, time\\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\\ntime.sleep(600)', sys.argv[1]])\n"
    "time.sleep(600)\n",
    LABEL,
]


def _wait_for(condition, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def _keeper(owner: int) -> list[str]:
    return [sys.executable, "-m", "dataengine.teacher.keeper", str(owner), "--", *TREE]


def _kill_all(own: OwnProcesses) -> None:
    for proc in own():
        proc.kill()


def test_sigkill_of_the_owner_ends_the_whole_tree(own_processes):
    """The owner (a run) is killed with SIGKILL: the keeper, the server and the server's child all go."""
    owner_code = (
        "import os, subprocess, sys, time\n"
        f"subprocess.Popen({_keeper(-1)!r}[:3] + [str(os.getpid())] + {_keeper(-1)!r}[4:], start_new_session=True)\n"
        "time.sleep(600)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", owner_code], env=own_processes.env())

    def tree() -> list[int]:  # keeper, server, server's child: what the owner started
        return [p.pid for p in own_processes() if p.pid != owner.pid]

    try:
        assert _wait_for(lambda: len(tree()) == 3), "the stand-in server tree did not start"
        owner.kill()
        owner.wait()
        assert _wait_for(lambda: not own_processes()), [p.pid for p in own_processes()]
    finally:
        _kill_all(own_processes)


@pytest.fixture
def keeper(own_processes):
    """A keeper owned by this test process, running the stand-in tree; killed with what is left at the end."""
    proc = subprocess.Popen(_keeper(os.getpid()), start_new_session=True, env=own_processes.env())
    assert _wait_for(lambda: len(own_processes()) == 3)  # keeper, server, server's child
    yield proc
    proc.kill()
    _kill_all(own_processes)


def test_a_killed_server_takes_its_children_and_its_keeper_with_it(keeper, own_processes):
    """kill -9 of the API server: its SIGTERM-ignoring child does not live on under pid 1."""
    psutil.Process(keeper.pid).children()[0].kill()
    assert keeper.wait(timeout=20) == 128 + signal.SIGKILL  # the server's fate, as an exit status
    assert _wait_for(lambda: not own_processes())


def test_sigterm_to_the_keeper_stops_the_tree_within_its_grace(keeper, own_processes):
    started = time.monotonic()
    keeper.terminate()
    assert keeper.wait(timeout=20) == 128 + signal.SIGTERM
    assert not own_processes() and time.monotonic() - started < 10


def test_a_rerun_stops_the_tree_its_folder_recorded_and_nothing_else(tmp_path: Path, own_processes):
    """A leftover tree (its keeper gone too) is found by its recorded session; an unrelated process
    with the same command line is not touched."""
    leftover = subprocess.Popen(TREE, start_new_session=True, env=own_processes.env())
    stranger = subprocess.Popen(TREE[:2] + ["import time; time.sleep(600)", LABEL], env=own_processes.env())
    try:
        assert _wait_for(lambda: len(own_processes()) == 3)
        record = tmp_path / "teacher-server.json"
        record.write_text(json.dumps({"pid": leftover.pid, "started": psutil.Process(leftover.pid).create_time()}))
        lines: list[str] = []
        stop_recorded(record, lines.append)
        assert _wait_for(lambda: [p.pid for p in own_processes()] == [stranger.pid])
        assert not record.exists() and "stopped 2 teacher server process(es)" in lines[0]
        # a record whose pid now belongs to a younger process (pid reuse) is left alone
        record.write_text(json.dumps({"pid": stranger.pid, "started": time.time() + 60}))
        stop_recorded(record, lines.append)
        assert stranger.poll() is None
    finally:
        leftover.kill()
        stranger.kill()
        _kill_all(own_processes)


def test_forked_children_die_with_their_parent(own_processes):
    """What datatrove's multiprocess Manager is: a fork without exec. It must not outlive a killed run."""
    code = (
        "import os, sys, time\n"
        "from dataengine.lifetime import forks_die_with_parent\n"
        "forks_die_with_parent()\n"
        "if os.fork() == 0:\n"
        f"    os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(600)', {LABEL!r}])\n"
        "time.sleep(600)\n"
    )
    root = Path(__file__).resolve().parents[1]
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=root, env=own_processes.env())
    try:
        assert _wait_for(lambda: len([p for p in own_processes() if p.pid != parent.pid]) == 1)  # the fork
        parent.kill()
        parent.wait()
        assert _wait_for(lambda: not own_processes(), timeout=5)
    finally:
        _kill_all(own_processes)


STOPPABLE = """
import os, signal, sys, time
import dataengine.cli as cli

cli.SHUTDOWN_GRACE_S = {grace}
cli.stop_on_signals()


class Finaliser:
    def __del__(self):
        # the signal's handler runs here, inside a finaliser, where no exception can leave
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)


try:
    {body}
except cli.Stopped as exc:
    print("stopped", flush=True)
    {after}
"""


def _stoppable(body: str, after: str = "sys.exit(exc.code)", grace: float = 30) -> subprocess.Popen:
    code = STOPPABLE.format(grace=grace, body=body, after=after)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_stop_signal_landing_in_a_finaliser_is_not_lost():
    # without the redelivery the exception dies with the finaliser and the sleep runs its 30 s
    proc = _stoppable("Finaliser(); time.sleep(30)")
    out, err = proc.communicate(timeout=15)
    assert out.strip() == "stopped" and proc.returncode == 143, err


def test_a_shutdown_that_hangs_is_cut_short_with_the_resume_line():
    started = time.monotonic()
    proc = _stoppable("time.sleep(0.5); os.kill(os.getpid(), signal.SIGTERM); time.sleep(30)", "time.sleep(30)", 1)
    out, err = proc.communicate(timeout=15)
    assert time.monotonic() - started < 10 and proc.returncode == 143
    assert "terminated: shutdown took over 1s, exiting now" in err and "run the same command to resume" in err


def test_a_worker_thread_dying_of_the_stop_is_quiet_and_one_dying_before_is_not():
    # a worker thread dies before the stop (its traceback is printed), then one after it, as aiosqlite's does
    # when the stop closes the event loop it reports to (nothing printed: the stop is not a failure)
    body = (
        "import threading; t = threading.Thread(target=lambda: 1 / 0); t.start(); t.join(); "
        "os.kill(os.getpid(), signal.SIGTERM); time.sleep(30)"
    )
    after = "t = threading.Thread(target=lambda: {}['loop is closed']); t.start(); t.join(); sys.exit(exc.code)"
    proc = _stoppable(body, after)
    out, err = proc.communicate(timeout=15)
    assert out.strip() == "stopped" and proc.returncode == 143
    assert "ZeroDivisionError" in err and "loop is closed" not in err and err.count("Traceback") == 1
