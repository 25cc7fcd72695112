"""schedule: cron handling, the run lock, the foreground scheduler, and the exports for real schedulers."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from croniter import croniter
from rich.console import Console
from typer.testing import CliRunner

from dataengine.cli import app
from dataengine.errors import UserError
from dataengine.recipe import cron_problem, load_recipe
from dataengine.schedule.cron import due_times, next_time, on_calendar
from dataengine.schedule.export import export, next_due
from dataengine.schedule.scheduled_run import BUSY, RunLock, history, run_scheduled
from dataengine.schedule.scheduler import Entry, _launch
from tests.conftest import FILTERS_OFF, SHORT, tiny_recipe

# Runs of this recipe fail fast and for a real reason: the prompt file has no `question` column.
RECIPE = """
name: sched
pipeline: curate
teacher: {{model: builtin:smollm2-moe, endpoint: "http://127.0.0.1:9/v1"}}
generate:
  sources: [{{path: prompts.jsonl, field: question}}]
curate: {{}}
schedule: {{cron: "{cron}", timezone: {tz}}}
"""


def _recipe(tmp_path: Path, cron: str = "30 3 * * 1-5", tz: str = "Europe/Paris") -> Path:
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "hello"}\n')
    path = tmp_path / "sched.yaml"
    path.write_text(RECIPE.format(cron=cron, tz=tz))
    return path


@pytest.mark.parametrize(
    "expr",
    [
        "30 3 * * 1-5",
        "*/15 * * * *",
        "0 0 1 * *",
        "0 12 * * 0",
        "5 4 * 1,6 *",
        "0 9-17/2 * * mon-fri",
        "0 3 * jan-mar *",
    ],
)
def test_systemd_calendar_matches_cron(expr):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    spec = f"{on_calendar(expr)} UTC"
    out = subprocess.run(["systemd-analyze", "calendar", "--iterations=5", spec], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    elapses = [
        line.split(":", 1)[1].strip()
        for line in out.stdout.splitlines()
        if line.strip().startswith(("Next elapse", "Iter."))
    ]
    systemd = [datetime.strptime(e.split(" ", 1)[1], "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC) for e in elapses]
    it = croniter(expr, datetime.now(UTC), ret_type=datetime)
    assert systemd == [it.get_next(datetime) for _ in range(5)]


def test_cron_checks():
    assert cron_problem("0 3 * * *") is None and cron_problem("*/5 0 3 * * *") is None
    assert "6 (seconds first)" in cron_problem("* * *")
    assert "not a valid cron" in cron_problem("61 * * * *")
    assert "no croniter extensions" in cron_problem("0 0 L * *")


def test_exports_parse_and_all_run_schedule_once(tmp_path):
    path = _recipe(tmp_path)
    recipe = load_recipe(path)
    once = f"schedule once {path.resolve()}"

    crontab = export(recipe, path, "crontab", "img")["crontab"].splitlines()
    assert crontab[0] == "CRON_TZ=Europe/Paris"
    fields = crontab[1].split()
    assert croniter.is_valid(" ".join(fields[:5])) and " ".join(fields[:5]) == "30 3 * * 1-5" and once in crontab[1]

    cronjob = yaml.safe_load(export(recipe, path, "k8s", "registry/dataengine:1")["dataengine-sched.cronjob.yaml"])
    assert cronjob["kind"] == "CronJob" and cronjob["apiVersion"] == "batch/v1"
    spec = cronjob["spec"]
    assert spec["schedule"] == "30 3 * * 1-5" and spec["timeZone"] == "Europe/Paris"
    assert spec["concurrencyPolicy"] == "Forbid"
    container = spec["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry/dataengine:1"
    assert container["command"][-2:] == ["once", "/work/recipe/sched.yaml"]  # the ConfigMap's copy, in the pod

    script = export(recipe, path, "slurm", "img")["dataengine-sched.sbatch"]
    sbatch = dict(line[len("#SBATCH --") :].split("=", 1) for line in script.splitlines() if line.startswith("#SBATCH"))
    assert sbatch["dependency"] == "singleton" and sbatch["job-name"] == "dataengine-sched"
    assert datetime.fromisoformat(sbatch["begin"]) == next_due(recipe).replace(tzinfo=None)
    assert once in script and "sbatch --begin" in script
    syntax = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert syntax.returncode == 0, syntax.stderr

    units = export(recipe, path, "systemd", user="dataengine")
    assert "OnCalendar=Mon..Fri *-*-* 3:30:0 Europe/Paris" in units["dataengine-sched.timer"]
    service = units["dataengine-sched.service"].splitlines()
    assert any(line.startswith("ExecStart=") and line.endswith(once) for line in service)
    # the service runs as --user, its HF_TOKEN in an optional (leading -) environment file that root owns
    assert "User=dataengine" in service and "EnvironmentFile=-/etc/dataengine/dataengine-sched.env" in service
    assert any(line.startswith("#") and "HF_TOKEN" in line for line in service)
    assert "SuccessExitStatus=75" in service  # a tick skipped while last night's run still holds the lock
    if shutil.which("systemd-analyze"):
        for name, text in units.items():
            (tmp_path / name).write_text(text)
        verify = subprocess.run(
            ["systemd-analyze", "verify", *(str(tmp_path / n) for n in units)], capture_output=True, text=True
        )
        assert verify.returncode == 0, verify.stderr


def test_exports_refuse_what_the_target_cannot_express(tmp_path):
    recipe = load_recipe(_recipe(tmp_path, cron="*/5 * * * * *"))
    for fmt in ("crontab", "k8s"):
        with pytest.raises(UserError, match=f"seconds field, which {fmt} cannot express"):
            export(recipe, tmp_path / "sched.yaml", fmt, "img")
    with pytest.raises(UserError, match="unknown export format 'cron'"):
        export(recipe, tmp_path / "sched.yaml", "cron", "img")
    timer = export(recipe, tmp_path / "sched.yaml", "systemd", user="u")["dataengine-sched.timer"]
    assert "OnCalendar=*-*-* *:*:0/5 Europe/Paris" in timer  # every 5 seconds


def test_a_held_lock_skips_the_run_and_says_why(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runs/<name> is under the working directory
    path = _recipe(tmp_path)
    recipe = load_recipe(path)
    home = tmp_path / "runs" / "sched"
    with RunLock(home / ".schedule.lock") as lock:
        assert lock.held
        console = Console(record=True, width=200)
        assert run_scheduled(recipe, tmp_path, None, console) == BUSY
        result = CliRunner().invoke(app, ["schedule", "once", str(path)])
        assert result.exit_code == BUSY
    assert "already running" in console.export_text()
    assert [h["status"] for h in history(home)] == ["skipped", "skipped"]


def test_the_lock_does_not_outlive_a_crashed_holder(tmp_path):
    lock_file = tmp_path / "x.lock"
    code = (
        "import time; from pathlib import Path; from dataengine.schedule.scheduled_run import RunLock\n"
        f"lock = RunLock(Path({str(lock_file)!r})).__enter__()\nprint(lock.held, flush=True)\ntime.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "True"
    with RunLock(lock_file) as lock:
        assert not lock.held and lock.holder == str(holder.pid)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with RunLock(lock_file) as lock:
        assert lock.held


def test_a_tick_is_skipped_while_the_previous_run_is_still_going(tmp_path):
    entry = Entry(_recipe(tmp_path), load_recipe(_recipe(tmp_path)))
    entry.process = subprocess.Popen(["sleep", "30"])
    console = Console(record=True, width=200)
    try:
        assert _launch(entry, console) == 0
    finally:
        entry.process.kill()
    assert "skipped, the previous run is still going" in console.export_text()


def test_due_times_are_read_in_the_recipe_timezone():
    after = datetime(2026, 3, 28, 0, 0, tzinfo=UTC)  # Paris moves to summer time on the 29th at 02:00
    it = due_times("30 3 * * *", "Europe/Paris", after)
    first, second = (it.get_next(datetime).astimezone(UTC) for _ in range(2))
    assert first == datetime(2026, 3, 28, 2, 30, tzinfo=UTC)  # 03:30 CET
    assert second == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)  # 03:30 CEST: 23 hours later


@pytest.mark.slow
def test_scheduler_runs_each_tick_once_and_goes_on_after_failures(tmp_path):
    path = _recipe(tmp_path, cron="*/10 * * * * *", tz="UTC")
    proc = subprocess.run(
        [sys.executable, "-m", "dataengine.cli", "schedule", "run", str(path), "--max-runs", "2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    shown = " ".join(proc.stdout.split())  # rich wraps lines at 80 columns without a terminal
    assert shown.count("failed with exit code 2") == 2 and "the scheduler goes on" in shown
    runs = history(tmp_path / "runs" / "sched")
    assert [r["status"] for r in runs] == ["failed", "failed"]
    assert "no column 'question'" in runs[0]["error"]
    ticks = [datetime.fromisoformat(r["tick"]) for r in runs]
    assert ticks[1] - ticks[0] == timedelta(seconds=10) and all(t.second % 10 == 0 for t in ticks)
    assert runs[0]["seed"] != runs[1]["seed"]  # a fresh seed per tick, recorded
    logs = sorted((tmp_path / "runs" / "sched" / "scheduled").glob("*.log"))
    assert len(logs) == 2 and "no column 'question'" in logs[0].read_text()


@pytest.mark.slow
def test_a_second_scheduler_does_not_start_an_overlapping_run(tmp_path):
    path = _recipe(tmp_path, cron="*/2 * * * * *", tz="UTC")
    with RunLock(tmp_path / "runs" / "sched" / ".schedule.lock") as lock:  # the first scheduler's run
        assert lock.held
        proc = subprocess.run(
            [sys.executable, "-m", "dataengine.cli", "schedule", "run", str(path), "--max-runs", "1"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr
    assert "another run of this recipe holds its lock" in " ".join(proc.stdout.split())
    assert [r["status"] for r in history(tmp_path / "runs" / "sched")] == ["skipped"]
    assert not [p for p in (tmp_path / "runs" / "sched" / "scheduled").iterdir() if p.is_dir()]  # no run folder


@pytest.mark.slow
def test_a_scheduled_run_generates_with_its_own_seed(tmp_path, monkeypatch, teacher_server):
    monkeypatch.chdir(tmp_path)
    path = tiny_recipe(
        tmp_path,
        endpoint=teacher_server.base_url,
        quota=1,
        code=0,
        extra="schedule: {cron: '0 3 * * *', timezone: UTC}\n",
        **SHORT,
    )
    recipe = load_recipe(path)
    tick = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)
    assert run_scheduled(recipe, tmp_path, tick, Console(quiet=True)) == 0
    (record,) = history(tmp_path / "runs" / "tiny")
    run_dir = tmp_path / "runs" / "tiny" / "scheduled" / "20261124T030000Z"
    assert record["status"] == "ok" and record["run_dir"] == str(run_dir) and record["seed"] == int(tick.timestamp())
    assert json.loads((run_dir / "recipe.json").read_text())["generate"]["seed"] == record["seed"]
    generated = json.loads((run_dir / "generated" / "manifest.json").read_text())
    assert generated["rows_out"] + generated["drops"].get("empty_question", 0) == 6  # 3 languages x 2 rollouts


INCREMENTAL = f"""
pipeline: curate
curate:
  filters: {FILTERS_OFF}  # both runs have rows to publish, whatever the teacher writes
publish: {{to: published}}
schedule: {{cron: '0 3 * * *', timezone: UTC}}
"""


@pytest.mark.slow
def test_two_scheduled_runs_build_one_dataset_with_the_teacher(tmp_path, monkeypatch, teacher_server):
    """Real generation, curation and publishing, twice: the second tick appends only what is new."""
    from datasets import load_dataset
    from huggingface_hub import DatasetCard

    monkeypatch.chdir(tmp_path)
    path = tiny_recipe(tmp_path, endpoint=teacher_server.base_url, quota=1, code=0, extra=INCREMENTAL, **SHORT)
    target = tmp_path / "published"
    published: list[set[str]] = []
    for day in (24, 25):
        assert (
            run_scheduled(load_recipe(path), tmp_path, datetime(2026, 11, day, 3, tzinfo=UTC), Console(quiet=True)) == 0
        )
        published.append({r["id"] for split in ("train", "test") for r in load_dataset(str(target), split=split)})
    first, second = history(tmp_path / "runs" / "tiny")
    run2 = Path(second["run_dir"])
    kept2 = {r["id"] for r in load_dataset(str(run2 / "curated"), split="train")}
    assert first["rows_total"] == len(published[0]) > 0
    assert second["rows_added"] == len(kept2 - published[0]) and published[1] == published[0] | kept2
    assert second["rows_total"] == len(published[1])
    runs = DatasetCard.load(target / "README.md").data.to_dict()["dataengine_runs"]
    assert [r["seed"] for r in runs] == [first["seed"], second["seed"]] and first["seed"] != second["seed"]
    assert (run2 / "report.html").is_file()


def test_the_repeated_hour_when_clocks_go_back_runs_once():
    after = datetime(2026, 10, 25, 0, 0, tzinfo=UTC)  # 02:00 CEST; at 03:00 CEST Paris goes back to 02:00 CET
    first = next_time("30 2 * * *", "Europe/Paris", after)
    assert first.astimezone(UTC) == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    second = next_time("30 2 * * *", "Europe/Paris", first, previous=first)
    assert second.astimezone(UTC) == datetime(2026, 10, 26, 1, 30, tzinfo=UTC)  # not 02:30 CET the same night
    # a job that runs every 15 minutes keeps running through the repeated hour
    quarter = next_time("*/15 * * * *", "Europe/Paris", datetime(2026, 10, 25, 0, 45, tzinfo=UTC))
    assert quarter.astimezone(UTC) == datetime(2026, 10, 25, 1, 0, tzinfo=UTC)


def test_systemd_export_refuses_what_it_would_get_wrong(tmp_path):
    with pytest.raises(UserError, match="both day of month and weekday"):
        on_calendar("0 0 1 * mon")
    with pytest.raises(UserError, match="weekday steps"):
        on_calendar("0 0 * * 1-5/2")
    assert on_calendar("0 3 * jan-mar *") == "*-1..3-* 3:0:0"  # systemd months are numbers


def _pod(cronjob: dict) -> dict:
    return cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def test_k8s_export_deploys_with_a_volume_the_recipe_and_the_hub_token(tmp_path):
    """What `kubectl apply` needs beyond the schedule: the image given, runs on a PersistentVolumeClaim, the
    recipe from a ConfigMap written beside the CronJob, HF_TOKEN from an optional Secret, no host paths."""
    path = _recipe(tmp_path)
    recipe = load_recipe(path)
    files = export(recipe, path, "k8s", "reg.example/dataengine:abc123", volume_claim="nightly-runs", secret="hub")
    assert set(files) == {"dataengine-sched.cronjob.yaml", "dataengine-sched-recipe.configmap.yaml"}
    cronjob = yaml.safe_load(files["dataengine-sched.cronjob.yaml"])
    config_map = yaml.safe_load(files["dataengine-sched-recipe.configmap.yaml"])

    assert cronjob["apiVersion"] == "batch/v1" and cronjob["kind"] == "CronJob"
    assert cronjob["metadata"]["name"] == "dataengine-sched" and cronjob["spec"]["schedule"] == "30 3 * * 1-5"
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid" and cronjob["spec"]["timeZone"] == "Europe/Paris"
    pod = _pod(cronjob)
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["image"] == "reg.example/dataengine:abc123" and container["workingDir"] == "/work"
    assert container["command"] == ["dataengine", "schedule", "once", "/work/recipe/sched.yaml"]
    assert str(tmp_path) not in yaml.safe_dump(cronjob)  # nothing of this machine's paths reaches the pod

    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts["/work/runs"]]["persistentVolumeClaim"] == {"claimName": "nightly-runs"}
    assert volumes[mounts["/work/recipe"]]["configMap"]["name"] == config_map["metadata"]["name"]
    env = {e["name"]: e for e in container["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hub", "key": "HF_TOKEN", "optional": True}
    assert "resources" not in container  # the recipe's teacher is an endpoint: no GPU to ask for

    # the ConfigMap holds the recipe's text under its file name: the path the command reads
    assert config_map["apiVersion"] == "v1" and config_map["kind"] == "ConfigMap"
    assert config_map["data"] == {"sched.yaml": path.read_text()}
    assert "../runs" in files["dataengine-sched.cronjob.yaml"]  # the comment on where the recipe's files must be


def test_k8s_export_asks_for_a_gpu_when_the_recipe_starts_its_teacher():
    root = Path(__file__).resolve().parent.parent
    path = root / "recipes" / "nightly.yaml"
    recipe = load_recipe(path)
    assert not recipe.teacher.urls  # the builtin teacher, started by the run
    files = export(recipe, path, "k8s", "reg.example/dataengine:abc123")
    (container,) = _pod(yaml.safe_load(files["dataengine-nightly.cronjob.yaml"]))["containers"]
    assert container["resources"] == {"limits": {"nvidia.com/gpu": 1}}
    assert yaml.safe_load(files["dataengine-nightly-recipe.configmap.yaml"])["data"]["nightly.yaml"] == path.read_text()
    tp2 = recipe.model_copy(
        update={
            "teacher": recipe.teacher.model_copy(
                update={"vllm": recipe.teacher.vllm.model_copy(update={"tensor_parallel_size": 2})}
            )
        }
    )
    (container,) = _pod(yaml.safe_load(export(tp2, path, "k8s", "i:1")["dataengine-nightly.cronjob.yaml"]))[
        "containers"
    ]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2


def test_exports_refuse_without_what_they_cannot_guess(tmp_path):
    path = _recipe(tmp_path)
    recipe = load_recipe(path)
    for image in (None, ""):
        with pytest.raises(UserError, match=r"--to k8s needs --image.*`make image`"):
            export(recipe, path, "k8s", image)
    with pytest.raises(UserError, match="--to systemd needs --user"):
        export(recipe, path, "systemd")
    with pytest.raises(UserError, match="not a user name"):
        export(recipe, path, "systemd", user="root\nExecStartPre=/bin/sh")
    with pytest.raises(UserError, match="--env-file 'hf.env': systemd needs an absolute path"):
        export(recipe, path, "systemd", user="u", env_file="hf.env")
    with pytest.raises(UserError, match="--volume-claim 'Runs_1' is not a Kubernetes name"):
        export(recipe, path, "k8s", "i:1", volume_claim="Runs_1")
    # the CLI: no default image any more, and the flags reach the export
    result = CliRunner().invoke(app, ["schedule", "export", str(path), "--to", "k8s"])
    assert isinstance(result.exception, UserError) and "--image" in str(result.exception)
    out = tmp_path / "k8s"
    args = ["schedule", "export", str(path), "--to", "k8s", "--image", "r/d:1", "--volume-claim", "v", "--secret", "s"]
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    pod = _pod(yaml.safe_load((out / "dataengine-sched.cronjob.yaml").read_text()))
    assert pod["containers"][0]["image"] == "r/d:1" and pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "v"
    assert pod["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "s"
    assert (out / "dataengine-sched-recipe.configmap.yaml").is_file()
    args = ["schedule", "export", str(path), "--to", "systemd", "--user", "svc", "--env-file", "/etc/de/x.env"]
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    service = (out / "dataengine-sched.service").read_text()
    assert "User=svc\n" in service and "EnvironmentFile=-/etc/de/x.env\n" in service


def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined and comments dropped."""
    lines = [line for line in dockerfile.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined.splitlines() if line.strip()]


def test_the_dockerfile_installs_the_gpu_extra_and_runs_dataengine():
    """No container engine here: the Dockerfile's structure is checked instead of a build."""
    import tomllib

    root = Path(__file__).resolve().parent.parent
    steps = _instructions((root / "Dockerfile").read_text())
    kinds = [kind for kind, _ in steps]
    assert kinds[0] in ("FROM", "ARG") and "FROM" in kinds
    runs = [args for kind, args in steps if kind == "RUN"]
    assert any("pip install '.[gpu]'" in run for run in runs)
    assert tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    assert any("apt-get install" in run and "bubblewrap" in run.split() for run in runs)
    assert [args for kind, args in steps if kind == "WORKDIR"][-1] == "/work"
    assert json.loads(dict(steps)["ENTRYPOINT"]) == ["dataengine"]
    # the build context has what `pip install .` reads, and not the venv or run folders
    ignore = (root / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") :].count("*") == 1
    for needed in ("pyproject.toml", "README.md", "dataengine/", "pipelines/"):
        assert f"!{needed}" in ignore
    assert not any(line.startswith("!") and (".venv" in line or "runs" in line) for line in ignore)


def test_make_image_without_a_container_engine_says_so_and_succeeds():
    root = Path(__file__).resolve().parent.parent
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    assert ".PHONY:" in (makefile := (root / "Makefile").read_text()) and " image " in makefile.split(".PHONY:")[1]
    done = subprocess.run(["make", "-s", "image", "ENGINE="], cwd=root, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "no container engine found" in done.stdout and "not built" in done.stdout
    dry = subprocess.run(
        ["make", "-n", "image", "ENGINE=podman", "IMAGE=r/d:1"], cwd=root, capture_output=True, text=True
    )
    assert "build -t r/d:1 ." in dry.stdout
