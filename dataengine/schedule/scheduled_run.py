"""One scheduled run of a recipe: a lock so two never overlap, a fresh seed, and a history line.

The lock is filelock's `flock` on `runs/<name>/.schedule.lock`, held by the process that runs the recipe:
the kernel drops it when that process ends, however it ends, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from filelock import FileLock, Timeout
from rich.console import Console

from dataengine.atomic import write_atomic
from dataengine.errors import StageError, UserError
from dataengine.recipe import Recipe
from dataengine.results import PublishStats

BUSY = 75  # EX_TEMPFAIL: another run of the recipe holds the lock; the tick is skipped


class RunLock:
    """Non-blocking exclusive lock (filelock's `flock` on the lock file: the kernel drops it when the holding
    process ends, however it ends). `held` is False when another process has it, its pid in `holder`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.held = False
        self.holder = ""
        self._lock = FileLock(path, timeout=0)
        # beside the lock, not in it: filelock owns the lock file's descriptor (and older versions truncate
        # it on every try, a contender's too)
        self._pid = path.with_name(path.name + ".pid")

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except Timeout:
            self.holder = self._pid.read_text().strip() if self._pid.is_file() else ""
            return self
        self.held = True
        write_atomic(self._pid, str(os.getpid()))
        return self

    def __exit__(self, *exc) -> None:
        if self.held:
            self._lock.release()


def home(recipe: Recipe, base_dir: Path) -> Path:
    from dataengine.runner import default_run_dir

    return default_run_dir(recipe, base_dir)


def seed_for(tick: datetime) -> int:
    """A fresh generation seed per tick, derived from its time so a rerun of the same tick draws the same."""
    return int(tick.timestamp())


def scheduled_recipe(recipe: Recipe, seed: int) -> Recipe:
    """The recipe as a scheduled run runs it: the tick's seed. (Appending to what is published follows
    from the recipe itself: publish.append defaults to on when it has a schedule.)"""
    if recipe.generate is None:  # rows brought with `ingest`: nothing is sampled
        return recipe
    return recipe.model_copy(update={"generate": recipe.generate.model_copy(update={"seed": seed})})


def run_scheduled(recipe: Recipe, base_dir: Path, tick: datetime | None, console: Console) -> int:
    """Run the recipe once for `tick` (default: now) in runs/<name>/scheduled/<UTC stamp>/; exit code."""
    from dataengine.runner import run_recipe

    folder = home(recipe, base_dir)
    timezone = ZoneInfo(recipe.schedule.timezone) if recipe.schedule else UTC
    tick = tick or datetime.now(timezone)
    tick = (tick if tick.tzinfo else tick.replace(tzinfo=timezone)).astimezone(timezone)  # no offset: the recipe's
    with RunLock(folder / ".schedule.lock") as lock:
        if not lock.held:
            console.print(f"a scheduled run of {recipe.name} is already running (pid {lock.holder}): tick skipped")
            _history(folder, {"tick": tick.isoformat(), "status": "skipped", "reason": "already running"})
            return BUSY
        seed = seed_for(tick)
        run_dir = folder / "scheduled" / tick.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        scheduled = scheduled_recipe(recipe, seed)
        console.print(f"scheduled run of {recipe.name} for {tick.isoformat()}: seed {seed}, folder {run_dir}")
        started = time.time()
        record = {"tick": tick.isoformat(), "seed": seed, "run_dir": str(run_dir), "pid": os.getpid()}
        try:
            manifests = run_recipe(scheduled, base_dir, run_dir=run_dir, console=console)
        except (UserError, StageError) as exc:
            _history(folder, {**record, "status": "failed", "error": str(exc), "seconds": _since(started)})
            raise
        publish = PublishStats.of(manifests.get("publish"))
        published = publish.history() if publish is not None else {}
        _history(folder, {**record, "status": "ok", "seconds": _since(started), **published})
        return 0


def _since(started: float) -> float:
    return round(time.time() - started, 2)


def _history(folder: Path, record: dict) -> None:
    """One JSON line per scheduled run in runs/<name>/schedule.jsonl (append-only)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "schedule.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")


def history(folder: Path) -> list[dict]:
    path = folder / "schedule.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
