"""Keeping datatrove's logging off the terminal, where the progress bars and summaries go."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from loguru import logger


@contextlib.contextmanager
def datatrove_logs_to(path: Path) -> Iterator[None]:
    """datatrove logs every task to stderr as well as to its own log file; send that copy to a file,
    then leave loguru with warnings-only on stderr. File descriptor 2 is redirected too, because
    datatrove's worker processes (workers > 1) write to the stderr they inherit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "a") as sink, contextlib.redirect_stderr(sink):
        os.dup2(sink.fileno(), 2)
        # loguru's handlers hold the stream they were given, so re-point them, not only sys.stderr
        logger.remove()
        logger.add(sink, level="INFO")
        try:
            yield
        finally:
            sink.flush()
            os.dup2(saved, 2)
            os.close(saved)
            logger.remove()
            logger.add(sys.stderr, level="WARNING")
