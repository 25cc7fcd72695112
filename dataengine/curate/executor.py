"""Which datatrove executor runs the curation pipelines: the recipe picks, the code does not change."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from datatrove.executor import LocalPipelineExecutor

from dataengine.curate.dedup import RunPipeline
from dataengine.errors import StageError
from dataengine.recipe import SlurmSettings


def pipeline_runner(executor: str, workers: int, logs: Path, slurm: SlurmSettings | None = None) -> RunPipeline:
    """A function that runs one named datatrove pipeline to completion. Each pipeline logs to its
    own folder, where datatrove keeps per-task completion markers: a rerun skips finished tasks."""

    def run(name: str, pipeline: list, tasks: int) -> None:
        logging_dir = str(logs / name)
        if executor == "ray":
            # needs a Ray cluster: ray.init() / RAY_ADDRESS, as datatrove's RayPipelineExecutor expects
            from datatrove.executor import RayPipelineExecutor

            RayPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=logging_dir).run()
        elif executor == "slurm":
            run_on_slurm(name, pipeline, tasks, workers, logging_dir, slurm)
        else:
            LocalPipelineExecutor(pipeline, tasks=tasks, workers=min(workers, tasks), logging_dir=logging_dir).run()

    return run


def run_on_slurm(name: str, pipeline: list, tasks: int, workers: int, logging_dir: str, cfg: SlurmSettings) -> None:
    """Submit with datatrove's SlurmPipelineExecutor, then wait: its run() returns once the sbatch
    array is queued, and the next step reads this one's output."""
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
    while incomplete := executor.get_incomplete_ranks():
        if executor.job_id not in (None, -1) and not _queued(executor.job_id):
            time.sleep(1)  # a task may be writing its completion marker as the job leaves the queue
            if incomplete := executor.get_incomplete_ranks():
                raise StageError(
                    f"Slurm job {executor.job_id} ({name}) ended with {len(incomplete)} of {tasks} tasks unfinished; "
                    f"see {logging_dir}/slurm_logs. Run again to resubmit only those."
                )
            return
        time.sleep(cfg.poll_s)


def _queued(job_id: str) -> bool:
    """Whether squeue still lists the job (pending or running)."""
    done = subprocess.run(["squeue", "--noheader", "--jobs", str(job_id)], capture_output=True, text=True)
    return done.returncode == 0 and bool(done.stdout.strip())
