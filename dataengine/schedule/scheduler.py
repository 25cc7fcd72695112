"""`dataengine schedule run`: a foreground scheduler for one or more recipes with a `schedule:` block.

Each due tick starts `dataengine schedule once RECIPE --tick T` as a child process, logged to
runs/<name>/scheduled/<stamp>.log. A tick is started at most once; ticks missed while the machine slept
are coalesced into the next one. A recipe whose previous run is still going skips the tick (the child
also takes the recipe's lock, which covers a second scheduler on the same recipe). A failed run is
logged and the scheduler goes on.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from dataengine.errors import UserError
from dataengine.pipeline import load_recipe
from dataengine.recipe import Recipe
from dataengine.schedule.cron import next_time
from dataengine.schedule.scheduled_run import BUSY, history, home


@dataclass
class Entry:
    path: Path
    recipe: Recipe
    next_due: datetime = field(init=False)
    process: subprocess.Popen | None = None
    tick: datetime | None = None

    def __post_init__(self) -> None:
        self.advance(datetime.now(UTC))

    def advance(self, now: datetime, previous: datetime | None = None) -> None:
        """The first due time strictly after `now` (missed ticks collapse into one), never the same wall-clock
        time as `previous` (the repeated hour when clocks go back)."""
        schedule = self.recipe.schedule
        self.next_due = next_time(schedule.cron, schedule.timezone, now, previous)


def load_entries(paths: list[Path]) -> list[Entry]:
    entries = []
    for path in paths:
        recipe = load_recipe(path)
        if recipe.schedule is None:
            raise UserError(f"{path}: no `schedule:` block, nothing to schedule")
        entries.append(Entry(path.resolve(), recipe))
    return entries


def run_scheduler(paths: list[Path], console: Console, max_runs: int | None = None) -> int:
    """Run until interrupted (or until `max_runs` runs have finished); returns the number of runs started."""
    entries = load_entries(paths)
    for e in entries:
        past = history(home(e.recipe, e.path.parent))
        last = f"; last run {past[-1]['tick']}: {past[-1]['status']}" if past else ""
        console.print(
            f"{e.recipe.name}: '{e.recipe.schedule.cron}' ({e.recipe.schedule.timezone}), "
            f"next run {e.next_due.isoformat()}{last}"
        )
    started = 0
    try:
        while True:
            for e in entries:
                _reap(e, console)
            enough = max_runs is not None and started >= max_runs
            if enough and all(e.process is None for e in entries):
                return started
            if not enough:
                now = datetime.now(UTC)
                for e in entries:
                    if e.next_due <= now:
                        started += _launch(e, console)
                        e.advance(now, previous=e.next_due)
            time.sleep(0.2)
    finally:
        for e in entries:
            if e.process is not None and e.process.poll() is None:
                console.print(f"{e.recipe.name}: waiting for the running scheduled run to stop")
                e.process.terminate()
                e.process.wait()


def _launch(entry: Entry, console: Console) -> int:
    name = entry.recipe.name
    if entry.process is not None:
        console.print(f"{name}: tick {entry.next_due.isoformat()} skipped, the previous run is still going")
        return 0
    folder = home(entry.recipe, entry.path.parent) / "scheduled"
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"{entry.next_due.astimezone(UTC):%Y%m%dT%H%M%SZ}.log"
    command = [
        sys.executable,
        "-m",
        "dataengine.cli",
        "schedule",
        "once",
        str(entry.path),
        "--tick",
        entry.next_due.isoformat(),
    ]
    with open(log, "ab") as out:
        entry.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=Path.cwd())
    entry.tick = entry.next_due
    console.print(f"{name}: started the run for {entry.tick.isoformat()} (log {log})")
    return 1


def _reap(entry: Entry, console: Console) -> None:
    if entry.process is None or (code := entry.process.poll()) is None:
        return
    name, tick = entry.recipe.name, entry.tick.isoformat()
    if code == 0:
        console.print(f"{name}: run for {tick} finished")
    elif code == BUSY:
        console.print(f"{name}: run for {tick} skipped, another run of this recipe holds its lock")
    else:
        console.print(f"[red]{name}: run for {tick} failed with exit code {code}[/red]; the scheduler goes on")
    entry.process = None
