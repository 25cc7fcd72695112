"""Keeping datatrove's logging off the terminal, where the progress bars and summaries go."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from loguru import logger


@contextlib.contextmanager
def datatrove_logs_to(path: Path) -> Iterator[None]:
    """datatrove logs every task to stderr as well as to its own log file; send that copy to a file,
    then leave loguru with warnings-only on stderr."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as sink, contextlib.redirect_stderr(sink):
        # loguru's handlers hold the stream they were given, so re-point them, not only sys.stderr
        logger.remove()
        logger.add(sink, level="INFO")
        try:
            yield
        finally:
            logger.remove()
            logger.add(sys.stderr, level="WARNING")
