"""The recipe itself: its top-level fields, one block per stage, and the rules across blocks."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import Field, model_validator

from dataengine.recipe.base import WHERE, FolderName, StrictModel
from dataengine.recipe.curate import CurateConfig
from dataengine.recipe.generate import GenerateConfig
from dataengine.recipe.ingest import IngestConfig
from dataengine.recipe.publish import PublishConfig
from dataengine.recipe.route import RouteConfig
from dataengine.recipe.schedule import ScheduleConfig
from dataengine.recipe.score import ScoreConfig
from dataengine.recipe.teacher import TeacherConfig
from dataengine.recipe.train import TrainConfig


class Problems(ValueError):
    """Several rules of one validator broken at once: each becomes a line of its own in the recipe's error."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class Recipe(StrictModel):
    name: FolderName = Field(description="run name; also the default output folder runs/<name>")
    pipeline: str = Field(
        "generate",
        description="what wires the stages: a shipped pipeline (generate, curate, distill: the modules of "
        "pipelines/), a .py file relative to the recipe's folder, or module:function",
        # which stages run and what each reads is the wiring; each stage's key is its own
        json_schema_extra={"output_neutral": "decides which stages run, not what one of them makes"},
    )
    description: str | None = Field(None, description="free text, shown in plans and reports")
    output_dir: str | None = Field(
        None, description="run folder; default runs/<name> in the working directory", json_schema_extra=WHERE
    )
    teacher: TeacherConfig = Field(description="the model that writes the data")
    generate: GenerateConfig | None = Field(None, description="what to ask the teacher (or `ingest`)")
    ingest: IngestConfig | None = Field(
        None, description="rows you already have, read instead of generated (or `generate`)"
    )
    curate: CurateConfig | None = Field(None, description="filters, dedup, decontamination, code checks")
    score: ScoreConfig | None = Field(None, description="teacher top-k logprobs on kept rows (distill pipeline)")
    route: RouteConfig | None = Field(None, description="how the teacher routes the curated rows through its experts")
    train: TrainConfig | None = Field(None, description="student init, SFT, distillation, evaluation")
    publish: PublishConfig | None = Field(None, description="where the curated dataset goes, with its card")
    schedule: ScheduleConfig | None = Field(
        None,
        description="cron schedule for `dataengine schedule`",
        # what it means for the data reaches the stages as publish.append
        json_schema_extra={"output_neutral": "when runs start"},
    )

    @model_validator(mode="after")
    def _blocks_need(self) -> Recipe:
        """The rules across blocks, every broken one reported (each a line of the recipe's error). What a
        pipeline needs of the recipe is the pipeline's own `check` (pipelines/), not a rule here."""
        problems = []
        if (self.generate is None) == (self.ingest is None):
            problems.append(
                "give `generate` (the teacher writes the rows) or `ingest` (rows you already have), one of them"
            )
        distill = self.train.distill if self.train else None
        if distill is not None and distill.method == "offline_topk" and self.score is None:
            problems.append("train.distill.method offline_topk trains on stored teacher logprobs: add a `score` block")
        if self.score is not None and not self.teacher.urls and self.score.top_k > self.teacher.vllm.max_logprobs:
            problems.append(
                f"score.top_k ({self.score.top_k}) exceeds teacher.vllm.max_logprobs "
                f"({self.teacher.vllm.max_logprobs}); raise max_logprobs or lower top_k"
            )
        if self.curate is not None and self.curate.balance is not None and self.route is None:
            problems.append("curate.balance selects rows by how the teacher routes them: add a `route` block")
        if self.route is not None and self.curate is None:
            problems.append("route replays the curated rows: it needs a `curate` block")
        problems += self._check_pairs()
        if self.publish is not None and self.curate is None:
            problems.append("publish sends the curated rows: it needs a `curate` block")
        problems += self._check_incremental()
        starts = [self.train.student, *self.train.evaluate.compare_inits] if self.train else []
        for student in starts:
            if student.model is None and student.from_teacher is None and not self.teacher.is_builtin:
                problems.append(
                    f"{student.name}: prune alone starts from the teacher's dense parent, which only builtin "
                    "teachers ship; give model or from_teacher too"
                )
        if problems:
            raise Problems(problems)
        return self

    @model_validator(mode="before")
    @classmethod
    def _append_follows_schedule(cls, data: Any) -> Any:
        """publish.append defaults to the schedule's `incremental`: a recipe that runs on a schedule builds one
        growing dataset, whether a run is started by the scheduler or by hand."""
        if not isinstance(data, dict) or not isinstance(data.get("publish"), dict):
            return data
        if data["publish"].get("append") is not None:
            return data
        schedule = data.get("schedule")
        incremental = isinstance(schedule, dict) and schedule.get("incremental", True) is not False
        return {**data, "publish": {**data["publish"], "append": incremental}}

    def _check_pairs(self) -> list[str]:
        judge = self.curate.judge if self.curate is not None else None
        pairs = judge is not None and judge.pairs is not None
        problems = []
        gen = self.generate
        rollouts = [1]
        if gen is not None:
            rollouts += [gen.chat.rollouts if gen.chat else 1, gen.code.rollouts if gen.code else 1]
            rollouts += [source.rollouts for source in gen.sources]
        if pairs and max(rollouts) < 2:
            problems.append(
                "curate.judge.pairs compares rollouts of one prompt: set generate.chat.rollouts (or "
                "generate.code.rollouts, or a source's rollouts) to 2 or more"
            )
        if pairs and self.publish is not None and self.publish.append:
            problems.append(
                "curate.judge.pairs with publish.append: appending preference pairs is not supported yet; "
                "publish the pairs to a target of their own (publish.append: false)"
            )
        if self.train is not None and self.train.dpo is not None and not pairs:
            problems.append("train.dpo trains on preference pairs: add curate.judge.pairs")
        return problems

    def _check_incremental(self) -> list[str]:
        schedule = self.schedule
        if schedule is None or "incremental" not in schedule.model_fields_set or not schedule.incremental:
            return []
        if self.publish is None:
            return [
                "schedule.incremental appends each run to what is published: add a `publish` block "
                "or set incremental: false"
            ]
        if self.publish.append is False:
            return ["schedule.incremental: true contradicts publish.append: false; drop one of them"]
        return []

    def fingerprint(self, *parts: str) -> str:
        """Hash of the named top-level blocks (all when none): what a stage's result depends on."""
        data = self.model_dump(mode="json")
        if parts:
            data = {p: data[p] for p in parts}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
