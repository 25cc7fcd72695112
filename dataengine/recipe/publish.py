"""The `publish` block, and the targets it names (`parse_target`: hf://datasets/ORG/NAME, file://PATH or a
folder)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from dataengine.errors import UserError
from dataengine.recipe.base import StrictModel


class PublishConfig(StrictModel):
    """The curated rows as a Hub dataset: parquet under data/<config>/<split>-NNNNN-of-NNNNN.parquet and a
    README.md dataset card, uploaded to the Hub in one commit or written to a folder."""

    to: str = Field(description="hf://datasets/ORG/NAME, file://PATH or a plain folder path")
    private: bool = Field(True, description="hf:// only: create the repository private")
    revision: str | None = Field(None, description="hf:// only: branch to commit to (created if missing)")
    configs: list[Literal["kind", "language"]] = Field(
        default_factory=list, description="extra configs besides `default` (all rows): one per kind, per language"
    )
    test_fraction: float | None = Field(
        None, gt=0, lt=1, description="share of rows in the test split; default: the student's held-out rows, else 0.1"
    )
    max_rows_per_shard: int = Field(50_000, ge=1, description="rows per parquet file")
    license: str = Field("other", description="license in the card's front matter (a Hub license id)")
    tags: list[str] = Field(default_factory=list, description="extra tags in the card's front matter")
    append: bool | None = Field(
        None,
        description="add to what the target already holds: curation dedups against its rows, only new rows are "
        "appended (earlier rows keep their split) and the card's run history grows; default: on when the recipe "
        "has a schedule (unless schedule.incremental is false), so manual and scheduled runs add to one dataset",
    )

    @field_validator("to")
    @classmethod
    def _target(cls, value: str) -> str:
        try:
            parse_target(value, Path.cwd())
        except UserError as exc:
            raise ValueError(str(exc)) from None
        return value


@dataclass(frozen=True)
class Target:
    kind: str  # "hub" or "folder"
    location: str  # ORG/NAME for the Hub, an absolute folder otherwise

    def __str__(self) -> str:
        return f"hf://datasets/{self.location}" if self.kind == "hub" else f"file://{self.location}"


def parse_target(value: str, base_dir: Path) -> Target:
    """`publish.to` (or `dataengine publish --to`): hf://datasets/ORG/NAME, file://PATH or a folder, relative
    to `base_dir`."""
    if value.startswith("hf://"):
        repo = value.removeprefix("hf://datasets/") if value.startswith("hf://datasets/") else ""
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
            raise UserError(f"publish target {value!r}: Hub targets look like hf://datasets/ORG/NAME")
        return Target("hub", repo)
    if "://" in value and not value.startswith("file://"):
        raise UserError(
            f"publish target {value!r}: unknown scheme; use hf://datasets/ORG/NAME, file://PATH or a folder path"
        )
    path = Path(value.removeprefix("file://")).expanduser()
    return Target("folder", str(path if path.is_absolute() else (base_dir / path).resolve()))
