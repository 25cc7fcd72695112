"""The `ingest` block: rows you already have (finished conversations) instead of generated ones, for curation,
the judge, routing, scoring, training and publishing."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from dataengine.recipe.base import LanguageCode, StrictModel

ROW_FILES = (".jsonl", ".json", ".parquet")


class RowSource(StrictModel):
    """Finished conversations from a local file or folder (an earlier run's published `data/default/`, say), or a
    Hub dataset. A row is either a `messages` list of turns ending with the assistant's answer, or a prompt and
    an answer column. Rows that carry dataengine's own columns (a dataset this engine published) keep their id,
    provenance and curation-time fields."""

    path: str | None = Field(
        None, description="a .jsonl, .json or .parquet file, or a folder read recursively for them"
    )
    dataset: str | None = Field(None, description="Hub dataset id, loaded with datasets.load_dataset")
    split: str = Field("train", description="split of the Hub dataset")
    messages_field: str = Field("messages", description="column of turns ({role, content}), the answer last")
    prompt_field: str | None = Field(None, description="or: column of the prompt (with `answer_field`)")
    answer_field: str | None = Field(None, description="and the column of its answer")
    language_field: str | None = Field(None, description="column holding a BCP-47 code per row")
    language: LanguageCode = Field("en", description="language of every row without `language_field`")
    kind: Literal["chat", "code"] = Field("chat", description="kind of every row without a `kind` column")
    model: str | None = Field(None, description="who wrote the answers (provenance), when the rows do not say")
    limit: int | None = Field(None, ge=1, description="read at most this many rows")

    @model_validator(mode="after")
    def _one_origin(self) -> RowSource:
        if (self.path is None) == (self.dataset is None):
            raise ValueError("give exactly one of `path` (a local file or folder) or `dataset` (Hub id)")
        if self.path is not None and Path(self.path).suffix and Path(self.path).suffix not in ROW_FILES:
            raise ValueError(f"path {self.path!r} must be a folder or end in .jsonl, .json or .parquet")
        if (self.prompt_field is None) != (self.answer_field is None):
            raise ValueError("give both `prompt_field` and `answer_field`, or neither (then `messages_field`)")
        return self

    @property
    def origin(self) -> str:
        return self.path or f"hf://datasets/{self.dataset}"


class IngestConfig(StrictModel):
    """Rows you bring, read instead of generated (give `ingest` or `generate`): curate them with the shipped
    filters and dedup, judge, route, score and train a student on them, publish them."""

    sources: list[RowSource] = Field(min_length=1, description="where the rows are")
