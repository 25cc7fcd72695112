"""curate: the teacher writes samples, then datatrove filters, dedups and decontaminates them; then
they are published when the recipe has `publish`. Where curation keeps fewer rows than asked
(`generate.top_up`), more prompts are generated and both stages run again."""

from __future__ import annotations

from pathlib import Path

from dataengine.curate.stage import CurateStage
from dataengine.generate.stage import GenerateStage
from dataengine.generate.top_up import add_round
from dataengine.manifest import Manifest
from dataengine.pipelines import NextRound, Pipeline
from dataengine.publish.stage import PublishStage
from dataengine.recipe import Recipe
from dataengine.stage import Stage


def build(recipe: Recipe, base_dir: Path) -> Pipeline:
    stages: list[Stage] = [GenerateStage(recipe, base_dir), CurateStage(recipe, base_dir, rows_from="generated")]
    if recipe.publish is not None:
        stages.append(PublishStage(recipe, base_dir, rows_from="curated"))
    return Pipeline(stages, next_round=top_up(recipe))


def top_up(recipe: Recipe) -> NextRound:
    """After generate and curate: one more round of prompts where curation fell short of the recipe's targets."""

    def next_round(run_dir: Path, manifests: dict[str, Manifest]) -> str | None:
        extra = add_round(recipe, run_dir, manifests)
        return f"asking for more prompts where curation fell short: {extra}" if extra else None

    return next_round
