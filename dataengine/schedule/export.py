"""The recipe's schedule for real schedulers. Every export runs `dataengine schedule once RECIPE`, which
takes the recipe's lock, so even a scheduler that would overlap runs cannot run two at once.

- crontab: one line (with CRON_TZ);
- systemd: a oneshot service run as `--user`, its HF_TOKEN from an optional EnvironmentFile, and a timer
  (OnCalendar with the timezone, Persistent=true);
- k8s: a batch/v1 CronJob with concurrencyPolicy Forbid and timeZone, running the image built from the
  repository's Dockerfile (`--image`, required), runs on a PersistentVolumeClaim at /work/runs, the recipe
  from a ConfigMap (also written) at /work/recipe/, HF_TOKEN from an optional Secret, and a GPU limit when
  the recipe starts its own teacher;
- slurm: an sbatch script with --begin at the next due time and --dependency=singleton, which submits
  itself again for the following tick when it ends.
"""

from __future__ import annotations

import re
import shlex
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import yaml

from dataengine.errors import UserError
from dataengine.recipe import Recipe
from dataengine.schedule.cron import due_times, has_seconds, on_calendar
from dataengine.schedule.scheduled_run import BUSY, home

FORMATS = ("crontab", "systemd", "k8s", "slurm")

# Kubernetes: where the pod keeps what outlives it, and where it reads the recipe
K8S_WORKDIR = "/work"
K8S_RUNS = f"{K8S_WORKDIR}/runs"
K8S_RECIPE = f"{K8S_WORKDIR}/recipe"
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")  # names of claims, secrets, config maps
_CONFIG_KEY = re.compile(r"[-._a-zA-Z0-9]+")  # a ConfigMap's keys (the recipe's file name)
_UNIX_USER = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\$?|[0-9]+")


def _dataengine() -> str:
    """The dataengine executable next to this Python (the project's venv), else the one on PATH."""
    here = Path(sys.executable).parent / "dataengine"
    return str(here) if here.is_file() else "dataengine"


def export(
    recipe: Recipe,
    recipe_path: Path,
    fmt: str,
    image: str | None = None,
    *,
    volume_claim: str = "dataengine-runs",
    secret: str = "dataengine-hf",
    user: str | None = None,
    env_file: str | None = None,
) -> dict[str, str]:
    """File name -> content of the recipe's schedule in format `fmt`. k8s needs `image` (and uses
    `volume_claim`, `secret`); systemd needs `user` (and uses `env_file`, default /etc/dataengine/<job>.env)."""
    if recipe.schedule is None:
        raise UserError(f"{recipe_path}: no `schedule:` block to export")
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if has_seconds(recipe.schedule.cron) and fmt in ("crontab", "k8s"):
        raise UserError(f"schedule.cron {recipe.schedule.cron!r} has a seconds field, which {fmt} cannot express")
    job = Job(recipe, recipe_path.resolve())
    if fmt == "k8s":
        return _k8s(job, image, volume_claim, secret)
    if fmt == "systemd":
        return _systemd(job, user, env_file)
    return {"crontab": _crontab, "slurm": _slurm}[fmt](job)


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


def _systemd(job: Job, user: str | None, env_file: str | None) -> dict[str, str]:
    if not user:
        raise UserError(
            "--to systemd needs --user: the account the service runs as, which can write the working directory "
            f"({job.workdir}) and read the recipe (e.g. `useradd --system --create-home dataengine`)"
        )
    if not _UNIX_USER.fullmatch(user):
        raise UserError(f"--user {user!r} is not a user name or uid")
    env_file = env_file or f"/etc/dataengine/{job.name}.env"
    if not Path(env_file).is_absolute() or any(c.isspace() for c in env_file):
        raise UserError(f"--env-file {env_file!r}: systemd needs an absolute path without spaces")
    service = f"""[Unit]
Description=dataengine scheduled run of {job.recipe.name}

[Service]
Type=oneshot
User={user}
WorkingDirectory={job.workdir}
# HF_TOKEN=hf_... (for publish.to hf://...) and any ${{VAR}} the recipe reads go in this file, one VAR=value a
# line, owned by root with mode 600 (systemd reads it before it drops to {user}); the leading - lets the
# service start without it.
EnvironmentFile=-{env_file}
ExecStart={job.once}
# exit {BUSY}: another run of the recipe still holds its lock, so this tick was skipped; not a failed unit
SuccessExitStatus={BUSY}
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


def _k8s(job: Job, image: str | None, volume_claim: str, secret: str) -> dict[str, str]:
    if not image:
        raise UserError(
            "--to k8s needs --image: the container image the CronJob runs, with dataengine in it. Build it from "
            "the repository's Dockerfile with `make image`, push it to a registry the cluster pulls from, and "
            "pass --image REGISTRY/dataengine:TAG"
        )
    for flag, value in (("--volume-claim", volume_claim), ("--secret", secret)):
        if len(value) > 63 or not _DNS_LABEL.fullmatch(value):
            raise UserError(f"{flag} {value!r} is not a Kubernetes name (lowercase letters, digits and -)")
    file = job.recipe_path.name
    if not _CONFIG_KEY.fullmatch(file):
        raise UserError(f"{file!r}: a ConfigMap key (the recipe's file name) has only letters, digits, -, _ and .")
    # a CronJob's name is at most 52 characters (the controller appends 11 to name its Jobs)
    name = re.sub(r"-+", "-", job.name.lower()).strip("-")[:52].rstrip("-")
    config_map = f"{name}-recipe"
    gpus = 0 if job.recipe.teacher.urls else job.recipe.teacher.vllm.ranks
    container: dict = {
        "name": "dataengine",
        "image": image,
        "workingDir": K8S_WORKDIR,
        "command": ["dataengine", "schedule", "once", f"{K8S_RECIPE}/{file}"],
        "env": [
            # optional: a recipe that does not publish to the Hub runs without the Secret
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": secret, "key": "HF_TOKEN", "optional": True}}},
            # a Hub teacher's weights are downloaded onto the volume once, not into the pod every night
            {"name": "HF_HOME", "value": f"{K8S_RUNS}/.cache/huggingface"},
        ],
        "volumeMounts": [
            {"name": "runs", "mountPath": K8S_RUNS},
            {"name": "recipe", "mountPath": K8S_RECIPE, "readOnly": True},
            {"name": "shm", "mountPath": "/dev/shm"},  # a pod's own is 64 MB; vLLM's workers share more
        ],
    }
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": gpus}}
    pod = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": [
            {"name": "runs", "persistentVolumeClaim": {"claimName": volume_claim}},
            {"name": "recipe", "configMap": {"name": config_map}},
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}},
        ],
    }
    cronjob = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": name},
        "spec": {
            "schedule": job.schedule.cron,
            "timeZone": job.schedule.timezone,
            "concurrencyPolicy": "Forbid",
            "jobTemplate": {"spec": {"backoffLimit": 0, "template": {"spec": pod}}},
        },
    }
    recipe = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": config_map},
        "data": {file: job.recipe_path.read_text(encoding="utf-8")},
    }
    teacher = (
        f"its teacher server(s) at {', '.join(job.recipe.teacher.urls)}, so it asks for no GPU."
        if not gpus
        else f"its own teacher, so it asks for {gpus} GPU(s) (nvidia.com/gpu: NVIDIA's device plugin)."
    )
    header = _comment(
        f"dataengine schedule of {job.recipe.name} ({job.schedule.cron}, {job.schedule.timezone}) for Kubernetes, "
        f"from {job.recipe_path}. Apply it with the ConfigMap beside it: kubectl apply -f FOLDER/",
        f"Needs, in the same namespace: the image {image} (the repository's Dockerfile: `make image`, then push "
        f"it); the PersistentVolumeClaim {volume_claim}, mounted at {K8S_RUNS} (run folders, schedule history, "
        f"the Hub's model cache); to publish to the Hub, the Secret {secret} with the key HF_TOKEN "
        f"(kubectl create secret generic {secret} --from-literal=HF_TOKEN=hf_...). The run uses {teacher}",
        f"The recipe is read from {K8S_RECIPE}/{file} (the ConfigMap {config_map}, read-only, holding the "
        f"recipe only): relative paths in it are taken from {K8S_RECIPE}/, so the files it reads (prompt files, "
        "reference folders, a local model) must be on the volume (../runs/...) or in the image (absolute "
        "paths), and what it writes (publish.to, output_dir) must go to the volume (../runs/...).",
    )
    return {
        f"{name}.cronjob.yaml": header + yaml.safe_dump(cronjob, sort_keys=False),
        f"{config_map}.configmap.yaml": f"# the recipe {job.recipe_path} for the CronJob {name}\n"
        + yaml.dump(recipe, Dumper=_BlockDumper, sort_keys=False, allow_unicode=True),
    }


def _comment(*paragraphs: str) -> str:
    return "#\n".join(textwrap.fill(p, 110, initial_indent="# ", subsequent_indent="# ") + "\n" for p in paragraphs)


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks (`|`), so the recipe in the ConfigMap reads as the file does."""


def _literal(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_BlockDumper.add_representer(str, _literal)


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
