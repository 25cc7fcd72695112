"""The recipe's schedule for real schedulers. Every export runs `dataengine schedule once RECIPE`, which
takes the recipe's lock, so even a scheduler that would overlap runs cannot run two at once.

- crontab: one line (with CRON_TZ);
- systemd: a oneshot service and a timer (OnCalendar with the timezone, Persistent=true);
- k8s: a batch/v1 CronJob with concurrencyPolicy Forbid and timeZone;
- slurm: an sbatch script with --begin at the next due time and --dependency=singleton, which submits
  itself again for the following tick when it ends.
"""

from __future__ import annotations

import re
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path

import yaml

from dataengine.errors import UserError
from dataengine.recipe import Recipe
from dataengine.schedule.cron import due_times, has_seconds, on_calendar
from dataengine.schedule.scheduled_run import home

FORMATS = ("crontab", "systemd", "k8s", "slurm")


def _dataengine() -> str:
    """The dataengine executable next to this Python (the project's venv), else the one on PATH."""
    here = Path(sys.executable).parent / "dataengine"
    return str(here) if here.is_file() else "dataengine"


def export(recipe: Recipe, recipe_path: Path, fmt: str, image: str) -> dict[str, str]:
    """File name -> content of the recipe's schedule in format `fmt`."""
    if recipe.schedule is None:
        raise UserError(f"{recipe_path}: no `schedule:` block to export")
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if has_seconds(recipe.schedule.cron) and fmt in ("crontab", "k8s"):
        raise UserError(f"schedule.cron {recipe.schedule.cron!r} has a seconds field, which {fmt} cannot express")
    job = Job(recipe, recipe_path.resolve())
    if fmt == "k8s":
        return _k8s(job, image)
    return {"crontab": _crontab, "systemd": _systemd, "slurm": _slurm}[fmt](job)


class Job:
    """What every export runs, and where."""

    def __init__(self, recipe: Recipe, recipe_path: Path) -> None:
        self.recipe = recipe
        self.schedule = recipe.schedule
        self.recipe_path = recipe_path
        self.name = "dataengine-" + re.sub(r"[^A-Za-z0-9-]", "-", recipe.name)
        self.workdir = Path.cwd()
        self.home = home(recipe, recipe_path.parent)
        self.once = f"{shlex.quote(_dataengine())} schedule once {shlex.quote(str(recipe_path))}"


def _crontab(job: Job) -> dict[str, str]:
    log = shlex.quote(str(job.home / "schedule-cron.log"))
    # the run folder may not exist before the first run, and a redirection into a missing folder fails
    prepare = f"mkdir -p {shlex.quote(str(job.home))} && cd {shlex.quote(str(job.workdir))}"
    line = f"{job.schedule.cron} {prepare} && {job.once} >> {log} 2>&1"
    return {"crontab": f"CRON_TZ={job.schedule.timezone}\n{line}\n"}


def _systemd(job: Job) -> dict[str, str]:
    service = f"""[Unit]
Description=dataengine scheduled run of {job.recipe.name}

[Service]
Type=oneshot
WorkingDirectory={job.workdir}
ExecStart={job.once}
"""
    timer = f"""[Unit]
Description=dataengine schedule of {job.recipe.name} ({job.schedule.cron})

[Timer]
OnCalendar={on_calendar(job.schedule.cron)} {job.schedule.timezone}
Persistent=true
Unit={job.name}.service

[Install]
WantedBy=timers.target
"""
    return {f"{job.name}.service": service, f"{job.name}.timer": timer}


def _k8s(job: Job, image: str) -> dict[str, str]:
    container = {
        "name": "dataengine",
        "image": image,
        "workingDir": str(job.workdir),
        "command": ["dataengine", "schedule", "once", str(job.recipe_path)],
    }
    cronjob = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": job.name.lower()},
        "spec": {
            "schedule": job.schedule.cron,
            "timeZone": job.schedule.timezone,
            "concurrencyPolicy": "Forbid",
            "jobTemplate": {
                "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [container]}}}
            },
        },
    }
    return {f"{job.name}.cronjob.yaml": yaml.safe_dump(cronjob, sort_keys=False)}


def _slurm(job: Job) -> dict[str, str]:
    begin = next_due(job.recipe).strftime("%Y-%m-%dT%H:%M:%S")
    again = f"{shlex.quote(_dataengine())} schedule next {shlex.quote(str(job.recipe_path))} --local"
    script = f"""#!/bin/bash
#SBATCH --job-name={job.name}
#SBATCH --begin={begin}
#SBATCH --dependency=singleton
#SBATCH --output={job.workdir}/{job.name}-%j.log
# One job per tick: run the recipe, then queue this script again for the next due time.
# --begin is in the cluster's local time; the recipe's timezone is {job.schedule.timezone}.
cd {shlex.quote(str(job.workdir))}
{job.once}
status=$?
# the spooled copy of this script may be gone by now: ask Slurm for it, as submitted
scontrol write batch_script "$SLURM_JOB_ID" - | sbatch --begin="$({again})"
exit $status
"""
    return {f"{job.name}.sbatch": script}


def next_due(recipe: Recipe, local: bool = True) -> datetime:
    """The next due time, in the machine's local time (what Slurm's --begin reads) or the recipe's zone."""
    due = due_times(recipe.schedule.cron, recipe.schedule.timezone, datetime.now(UTC)).get_next(datetime)
    return due.astimezone() if local else due
