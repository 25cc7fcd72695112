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


# the libraries whose log records, warnings and progress bars mean nothing to someone running a recipe
LIBRARIES = ("transformers", "datasets", "huggingface_hub", "accelerate", "trl", "peft", "torch", "httpx", "filelock")


@contextlib.contextmanager
def libraries_to(path: Path) -> Iterator[None]:
    """For a run: the libraries' warnings, log records and progress bars (torch's `pin_memory` on CPU, a
    `datasets` map's bar, transformers' weight-loading bar for every model load) go to `path`, not the terminal,
    which keeps what the engine says. Their errors still show, and so do Python warnings raised in the engine's
    own code."""
    import logging
    import warnings

    import datasets
    import huggingface_hub.utils
    import torch  # noqa: F401  (imported first, it would add its own stderr handler inside and lose it after)
    import transformers.utils.logging

    import dataengine

    ours = str(Path(dataengine.__file__).parent) + os.sep
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    errors = logging.StreamHandler(sys.stderr)
    errors.setLevel(logging.ERROR)
    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).propagate) for name in LIBRARIES}
    for name in LIBRARIES:
        logging.getLogger(name).handlers = [handler, errors]
        logging.getLogger(name).propagate = False
    shown = warnings.showwarning
    bars = (
        transformers.utils.logging.is_progress_bar_enabled(),
        datasets.is_progress_bar_enabled(),
        huggingface_hub.utils.are_progress_bars_disabled(),
    )

    def to_log(message, category, filename, lineno, file=None, line=None) -> None:
        if filename.startswith(ours):
            shown(message, category, filename, lineno, file, line)
            return
        handler.acquire()  # datatrove's and TRL's threads warn too
        try:
            handler.stream.write(warnings.formatwarning(message, category, filename, lineno, line))
            handler.stream.flush()
        finally:
            handler.release()

    warnings.showwarning = to_log
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    huggingface_hub.utils.disable_progress_bars()
    try:
        yield
    finally:
        warnings.showwarning = shown
        for name, (handlers, propagate) in saved.items():
            logging.getLogger(name).handlers = handlers
            logging.getLogger(name).propagate = propagate
        if bars[0]:
            transformers.utils.logging.enable_progress_bar()
        if bars[1]:
            datasets.enable_progress_bars()
        # last: transformers' and datasets' switches turn huggingface_hub's bars on or off with their own
        if bars[2]:
            huggingface_hub.utils.disable_progress_bars()
        else:
            huggingface_hub.utils.enable_progress_bars()
        handler.close()
