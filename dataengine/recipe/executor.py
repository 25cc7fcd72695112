"""Which datatrove executor runs a stage's work, over how many tasks (the generate, curate and score blocks are
these settings and more)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from dataengine.recipe.base import PACE, WHERE, StrictModel


class SlurmSettings(StrictModel):
    """How datatrove's SlurmPipelineExecutor submits a stage's steps (one sbatch array per step)."""

    partition: str = Field(description="Slurm partition")
    time: str = Field("02:00:00", description="time limit per task, Slurm syntax")
    cpus_per_task: int = Field(1, ge=1)
    mem_per_cpu_gb: float = Field(2, gt=0)
    sbatch_args: dict[str, str] = Field(default_factory=dict, description="more #SBATCH directives, e.g. account")
    venv_path: str | None = Field(None, description="activate script sourced by the jobs; default this venv's")
    poll_s: float = Field(30.0, gt=0, description="how often the run checks whether a step's tasks are done")


class RaySettings(StrictModel):
    """What datatrove's RayPipelineExecutor reserves for each task."""

    cpus_per_task: int = Field(1, ge=1)
    gpus_per_task: int = Field(
        0, ge=0, description="GPUs per task: a generate or score task that starts its own vLLM server needs them"
    )
    mem_per_cpu_gb: float = Field(2, gt=0)


class ExecutorSettings(StrictModel):
    """Which datatrove executor runs a stage's work, over how many tasks: the recipe picks, the code does not change."""

    executor: Literal["local", "ray", "slurm"] = Field(
        "local", description="datatrove executor for every step", json_schema_extra=WHERE
    )
    slurm: SlurmSettings | None = Field(None, description="required with executor: slurm", json_schema_extra=WHERE)
    ray: RaySettings = Field(
        RaySettings(), description="what each task reserves with executor: ray", json_schema_extra=WHERE
    )
    tasks: int = Field(
        1, ge=1, description="datatrove tasks (shards): each works on its share of the rows", json_schema_extra=WHERE
    )
    workers: int = Field(1, ge=1, description="tasks run at once", json_schema_extra=PACE)

    @model_validator(mode="after")
    def _slurm_settings(self) -> ExecutorSettings:
        if self.executor == "slurm" and self.slurm is None:
            raise ValueError("executor: slurm needs a `slurm:` block with at least `partition`")
        return self
