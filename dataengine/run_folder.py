"""One reader of a run folder: every path in it, and where each stage's outputs went.

Layout:
    <run>/run.json          run id, recipe name, creation time, and the pipeline's stages with their output folders
    <run>/recipe.json       the validated recipe (what every stage was configured with), secrets removed
    <run>/<output>/         a stage's output: parquet shards (data/), its files, and, in its first output,
                            manifest.json
    <run>/top_up.json       top-up rounds asked for so far (pipelines that compose generate and curate)
    <run>/report.html       the run report
    <run>/.work/<stage>/    the stage's resumable state (checkpoints, request cache, logs)
    <run>/.work/libraries.log  what the libraries said (warnings, log records) while the run ran

Stages are found by name through run.json (the runner writes the pipeline's wiring there), so nothing outside
a pipeline needs to know what a stage calls its folders.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from dataengine.atomic import write_atomic
from dataengine.manifest import Manifest

RUN_INFO = "run.json"
RECIPE = "recipe.json"
TOP_UP = "top_up.json"
REPORT = "report.html"
WORK = ".work"
TRAINING_FILE = "training.json"  # in the train stage's output: init, phases, held-out ids
METRICS_FILE = "metrics.json"  # in the evaluate stage's output
ROUTING_MAP_FILE = "map.json"  # in the route stage's output


class RunFolder:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    # ------------------------------------------------------------------ identity

    @cached_property  # read once: every stage lookup below goes through it
    def info(self) -> dict[str, Any]:
        path = self.path / RUN_INFO
        return json.loads(path.read_text()) if path.is_file() else {}

    @property
    def exists(self) -> bool:
        return (self.path / RUN_INFO).is_file()

    @property
    def run_id(self) -> str:
        return self.info.get("run_id", self.path.name)

    def start(self, recipe_name: str, stages: dict[str, dict[str, str]]) -> str:
        """The run id, made when the folder is first used and kept across resumes; the pipeline's stages and
        their output folders, rewritten each time (a changed recipe may change the pipeline)."""
        self.path.mkdir(parents=True, exist_ok=True)
        info = self.info or {
            "run_id": f"{recipe_name}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}",
            "recipe": recipe_name,
            "created_at": datetime.now(UTC).isoformat(),
        }
        info = {**info, "stages": stages}
        write_atomic(self.path / RUN_INFO, json.dumps(info, indent=2))
        self.__dict__["info"] = info  # what was just written is what later lookups read
        self.__dict__.pop("_outputs", None)
        return info["run_id"]

    # ------------------------------------------------------------------ paths

    @property
    def recipe(self) -> Path:
        return self.path / RECIPE

    @property
    def top_up(self) -> Path:
        return self.path / TOP_UP

    @property
    def report(self) -> Path:
        return self.path / REPORT

    def work(self, stage: str) -> Path:
        return self.path / WORK / stage

    @property
    def teacher_log(self) -> Path:
        return self.path / WORK / "teacher-server.log"

    @property
    def library_log(self) -> Path:
        return self.path / WORK / "libraries.log"

    @property
    def target_copy(self) -> Path:
        """Where the run keeps its copy of a Hub publish target (curation and publishing share it)."""
        return self.path / WORK / "target"

    # ------------------------------------------------------------------ stages

    @cached_property
    def _outputs(self) -> dict[str, dict[str, str]]:
        """stage -> {role: folder}, in pipeline order."""
        if (stages := self.info.get("stages")) is not None:
            return stages
        # a run folder written before run.json recorded its pipeline: each stage is where its manifest is
        found = []
        for path in [*self.path.glob("*/manifest.json"), *self.path.glob("*/*/manifest.json")]:
            folder = path.parent.relative_to(self.path)
            if not folder.parts[0].startswith(".") and (manifest := Manifest.read(path.parent)) is not None:
                found.append(((manifest.timings or {}).get("started", 0.0), manifest.stage, {"output": str(folder)}))
        return {stage: outputs for _, stage, outputs in sorted(found)}

    @property
    def stages(self) -> list[str]:
        """The pipeline's stages, in order."""
        return list(self._outputs)

    def folder(self, stage: str, role: str | None = None) -> Path | None:
        """Where `stage` wrote its output `role` (its first output by default); None for a stage the run's
        pipeline does not have (or an output a run of an older version did not record)."""
        outputs = self._outputs.get(stage)
        if not outputs:
            return None
        folder = outputs.get(role) if role is not None else next(iter(outputs.values()))
        return self.path / folder if folder is not None else None

    def manifest(self, stage: str) -> Manifest | None:
        """The stage's manifest when it finished, else None."""
        folder = self.folder(stage)
        return Manifest.read(folder) if folder is not None else None

    def manifests(self) -> dict[str, Manifest]:
        """Manifests of the finished stages, in pipeline order."""
        return {stage: m for stage in self.stages if (m := self.manifest(stage)) is not None}

    def file(self, stage: str, name: str) -> Path | None:
        """Where a stage writes the file `name` into its output (training.json, metrics.json); None for a stage
        the run's pipeline does not have."""
        folder = self.folder(stage)
        return folder / name if folder is not None else None
