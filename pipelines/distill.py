"""distill: generate -> curate -> score (when the recipe has `score`) -> train -> evaluate -> publish (when
the recipe has `publish`)."""

from __future__ import annotations

from pathlib import Path

from dataengine.curate.stage import CurateStage
from dataengine.generate.stage import GenerateStage
from dataengine.publish.stage import PublishStage
from dataengine.recipe import Recipe
from dataengine.runner import Stage
from dataengine.score.stage import ScoreStage
from dataengine.train.evaluate_stage import EvaluateStage
from dataengine.train.stage import TrainStage


def build(recipe: Recipe, base_dir: Path) -> list[Stage]:
    stages: list[Stage] = [GenerateStage(recipe, base_dir), CurateStage(recipe, base_dir)]
    if recipe.score is not None:
        stages.append(ScoreStage(recipe, base_dir))
    stages += [TrainStage(recipe, base_dir), EvaluateStage(recipe, base_dir)]
    return [*stages, PublishStage(recipe, base_dir)] if recipe.publish is not None else stages
