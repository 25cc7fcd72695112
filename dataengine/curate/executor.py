"""Which datatrove executor runs the curation pipelines: the recipe picks, the code does not change."""

from __future__ import annotations

from pathlib import Path

from datatrove.executor import LocalPipelineExecutor

from dataengine.curate.dedup import RunPipeline


def pipeline_runner(executor: str, workers: int, logs: Path) -> RunPipeline:
    """A function that runs one named datatrove pipeline to completion. Each pipeline logs to its
    own folder, where datatrove keeps per-task completion markers: a rerun skips finished tasks."""

    def run(name: str, pipeline: list, tasks: int) -> None:
        logging_dir = str(logs / name)
        if executor == "ray":
            # needs a Ray cluster: ray.init() / RAY_ADDRESS, as datatrove's RayPipelineExecutor expects
            from datatrove.executor import RayPipelineExecutor

            RayPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=logging_dir).run()
        else:
            LocalPipelineExecutor(pipeline, tasks=tasks, workers=min(workers, tasks), logging_dir=logging_dir).run()

    return run
