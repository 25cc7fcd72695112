"""A stage of your own: a seeded sample of the rows curation kept, as JSON lines a person reads over coffee.

It brings its own recipe block, `review_sample:` (its config below), which `dataengine validate` checks like
the shipped blocks. Its key is that block and its input's fingerprint: change `rows` and it runs again, rerun
the recipe unchanged and it is found done.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from pydantic import Field

from dataengine import RunContext, Stage, StageConfig, StageResult, fingerprint_files, iter_rows


class ReviewSampleConfig(StageConfig):
    rows: int = Field(10, ge=1, description="rows in the sample")
    seed: int = Field(0, description="which rows")


class ReviewSample(Stage):
    name = "review_sample"
    config = ReviewSampleConfig
    reads = ("review_sample",)

    def __init__(self, recipe, rows_from: str) -> None:
        self.cfg = getattr(recipe, self.name, None) or ReviewSampleConfig()
        self.inputs = {"rows": rows_from}
        self.outputs = {"sample": "review"}

    def run(self, inputs: dict[str, Path], outputs: dict[str, Path], work: Path, ctx: RunContext) -> StageResult:
        rows = list(iter_rows(inputs["rows"], columns=["id", "kind", "language", "messages"]))
        picked = random.Random(self.cfg.seed).sample(rows, min(self.cfg.rows, len(rows)))
        path = outputs["sample"] / "sample.jsonl"
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in picked), encoding="utf-8")
        return StageResult(rows_in=len(rows), rows_out=len(picked), output_fingerprint=fingerprint_files([path]))
