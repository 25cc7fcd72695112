"""Which datatrove executor runs a stage's pipelines (`executor`, `tasks`, `workers` in the recipe): the recipe
picks, the code does not change. Curation's steps, generation's and scoring's requests all run here."""

from __future__ import annotations

import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from datatrove.executor import LocalPipelineExecutor
from datatrove.executor.base import PipelineExecutor
from datatrove.utils.stats import PipelineStats

from dataengine.errors import StageError
from dataengine.recipe import ExecutorSettings, SlurmSettings

# runs one named pipeline over N tasks to completion (or raises)
RunPipeline = Callable[[str, list, int], None]
FAILURES = "failures"  # <logging dir>/failures/<rank>.txt: why a task failed (the local executor writes it)


class _KeepGoing(LocalPipelineExecutor):
    """datatrove's local executor, except that a failed task does not stop its siblings: datatrove re-raises a
    task's exception, and its process pool then terminates every other task mid-request. Generation tasks
    each talk to their own endpoint, so one dead endpoint must end its own task only; the caller reads
    the unfinished ranks afterwards (datatrove's completion markers) and why (`failures/`)."""

    def _launch_run_for_rank(self, rank: int, ranks_q, completed=None, completed_lock=None) -> PipelineStats:
        try:
            return super()._launch_run_for_rank(rank, ranks_q, completed, completed_lock)
        except Exception as exc:
            record_failure(Path(self.logging_dir.path), rank, exc)
            return PipelineStats()


def record_failure(logging_dir: Path, rank: int, exc: BaseException) -> None:
    """Why task `rank` failed, where `failure` reads it: its first line, then the traceback."""
    (logging_dir / FAILURES).mkdir(parents=True, exist_ok=True)
    text = f"{type(exc).__name__}: {exc}\n\n{''.join(traceback.format_exception(exc))}"
    (logging_dir / FAILURES / f"{rank:05d}.txt").write_text(text)


def run_tasks(settings: ExecutorSettings, name: str, pipeline: list, tasks: int, logging_dir: Path) -> list[int]:
    """Run `pipeline` as `tasks` datatrove tasks on the recipe's executor; returns the ranks that did not finish.
    Each pipeline logs to its own folder, where datatrove keeps per-task completion markers: a rerun runs only
    the unfinished tasks."""
    logs = str(logging_dir)
    executor: PipelineExecutor
    if settings.executor == "ray":
        # needs a Ray cluster: ray.init() / RAY_ADDRESS, as datatrove's RayPipelineExecutor expects
        from datatrove.executor import RayPipelineExecutor

        ray = settings.ray
        executor = RayPipelineExecutor(
            pipeline,
            tasks=tasks,
            workers=settings.workers,
            logging_dir=logs,
            cpus_per_task=ray.cpus_per_task,
            gpus_per_task=ray.gpus_per_task,
            mem_per_cpu_gb=ray.mem_per_cpu_gb,
        )
        executor.run()
    elif settings.executor == "slurm":
        executor = run_on_slurm(name, pipeline, tasks, settings.workers, logs, settings.slurm)
    else:
        executor = _KeepGoing(pipeline, tasks=tasks, workers=min(settings.workers, tasks), logging_dir=logs)
        executor.run()
    return executor.get_incomplete_ranks()


def failure(logging_dir: Path, ranks: list[int]) -> str:
    """Why the first of `ranks` failed, in a line: from the local executor's record, else where to look."""
    for rank in ranks:
        path = logging_dir / FAILURES / f"{rank:05d}.txt"
        if path.is_file() and (line := path.read_text().strip().splitlines()[:1]):
            return line[0][:300]
    where = "slurm_logs" if (logging_dir / "slurm_logs").is_dir() else "logs"
    return f"task(s) {', '.join(map(str, ranks))} ended unfinished (see {logging_dir / where})"


def pipeline_runner(settings: ExecutorSettings, logs: Path) -> RunPipeline:
    """A function that runs one named datatrove pipeline to completion. A step's error stops the stage (it is a
    bug or the user's input, not a lost server): the local executor raises it as it is."""

    def run(name: str, pipeline: list, tasks: int) -> None:
        if settings.executor == "local":
            workers = min(settings.workers, tasks)
            LocalPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=str(logs / name)).run()
        elif incomplete := run_tasks(settings, name, pipeline, tasks, logs / name):
            raise StageError(
                f"{name}: {len(incomplete)} of {tasks} tasks unfinished on {settings.executor}; "
                f"{failure(logs / name, incomplete)}. Run again to rerun only those."
            )

    return run


def run_on_slurm(
    name: str, pipeline: list, tasks: int, workers: int, logging_dir: str, cfg: SlurmSettings
) -> PipelineExecutor:
    """Submit with datatrove's SlurmPipelineExecutor, then wait until the job leaves the queue: its run() returns
    once the sbatch array is queued, and the caller reads the tasks' output."""
    from datatrove.executor import SlurmPipelineExecutor

    executor = SlurmPipelineExecutor(
        pipeline,
        tasks=tasks,
        workers=workers,
        logging_dir=logging_dir,
        job_name=f"dataengine-{name}",
        partition=cfg.partition,
        time=cfg.time,
        cpus_per_task=cfg.cpus_per_task,
        mem_per_cpu_gb=cfg.mem_per_cpu_gb,
        sbatch_args=cfg.sbatch_args,
        venv_path=cfg.venv_path or str(Path(sys.prefix) / "bin" / "activate"),
    )
    executor.run()
    while executor.get_incomplete_ranks():
        if executor.job_id not in (None, -1) and not _queued(executor.job_id):
            time.sleep(1)  # a task may be writing its completion marker as the job leaves the queue
            break
        time.sleep(cfg.poll_s)
    return executor


def _queued(job_id: str) -> bool:
    """Whether squeue still lists the job (pending or running)."""
    done = subprocess.run(["squeue", "--noheader", "--jobs", str(job_id)], capture_output=True, text=True)
    return done.returncode == 0 and bool(done.stdout.strip())
