"""A stage's stats, typed: what other modules read from a manifest beyond its counts (top-up, the report, the
card, scheduled runs) is a field of one of these models, read by attribute, never by a key spelled elsewhere.

A stage builds its model and returns it as `StageResult.stats`; the manifest stores it as JSON and
`Model.of(manifest)` reads it back. A stage may record more than others read (extra fields are kept), so a
model declares only what some reader needs; a field renamed here breaks at the reader's attribute, not as a
silent `None`. Counts default to empty, so a manifest from before a field existed still reads. Like the row
schema (dataengine/rows/), these are shared vocabulary between stages, so they live below the stage packages, which
never import each other.
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict

from dataengine.manifest import Manifest


class StageStats(BaseModel):
    model_config = ConfigDict(extra="allow")

    @classmethod
    def of(cls, manifest: Manifest | None) -> Self | None:
        return None if manifest is None else cls.model_validate(manifest.stats)


class GenerateStats(StageStats):
    prompts: int = 0
    rows_by_kind_language: dict[str, int] = {}  # "chat/en" -> rows generated, every round
    teacher_tokens_per_second: float | None = None
    # (seconds since the stage began, tokens/s) over the active seconds of every round
    teacher_tokens_per_second_timeline: list[tuple[float, float]] = []


class Quota(BaseModel):
    model_config = ConfigDict(extra="allow")

    target: int
    kept: int
    short: int


class CurateStats(StageStats):
    quota: dict[str, Quota] = {}  # "chat/en" -> what the recipe asked for and what curation kept


class JudgeStats(StageStats):
    judge_model: str
    threshold: float
    score_histogram: dict[str, dict[str, int]]  # kept/rejected -> rows per mean score, by half points
    mean_by_criterion: dict[str, float] = {}
    kept_by_kind_language: dict[str, int] = {}
    unjudged: int = 0  # rows whose verdict could not be read
    mean_score_kept: float | None = None
    mean_score_rejected: float | None = None


class PublishStats(StageStats):
    rows_added: int
    rows_total: int

    def history(self) -> dict[str, Any]:
        """What a scheduled run records of its publish."""
        return {"rows_added": self.rows_added, "rows_total": self.rows_total}
