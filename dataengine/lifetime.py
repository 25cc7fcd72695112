"""Whatever a run starts ends with it, even when the run is killed with SIGKILL.

The kernel's parent-death signal (`PR_SET_PDEATHSIG`) is the one mechanism that survives `kill -9`
of the parent: nothing has to run in the dying process. It is cleared in a forked child and
fires when the *thread* that forked the child ends, so it is set again in every fork (see
`forks_die_with_parent`) and long-lived children are started from the main thread.
"""

from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)
_forking_parent = 0


def _prctl(option: int, value: int) -> None:
    if _libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}, {value}) failed")


def die_with_parent(sig: int = signal.SIGKILL, parent: int | None = None) -> None:
    """The kernel sends `sig` to this process when its parent ends; if `parent` has already gone, exit now."""
    _prctl(_PR_SET_PDEATHSIG, int(sig))
    if parent is not None and os.getppid() != parent:
        os._exit(128 + int(sig))


def become_subreaper() -> None:
    """Orphaned descendants are re-parented to this process instead of pid 1, so it can still end them."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def _remember_parent() -> None:
    global _forking_parent
    _forking_parent = os.getpid()


def forks_die_with_parent() -> None:
    """Every process forked from now on (datatrove's multiprocess Manager and pools, and their own forks)
    gets SIGKILL when the process that forked it ends: a killed run leaves no forked copy of itself
    holding its files open."""
    os.register_at_fork(
        before=_remember_parent, after_in_child=lambda: die_with_parent(signal.SIGKILL, _forking_parent)
    )
