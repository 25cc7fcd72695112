"""curate: the teacher writes samples, then datatrove filters, dedups and decontaminates them; then
they are published when the recipe has `publish`."""

from __future__ import annotations

from pathlib import Path

from dataengine.curate.stage import CurateStage
from dataengine.generate.stage import GenerateStage
from dataengine.publish.stage import PublishStage
from dataengine.recipe import Recipe
from dataengine.runner import Stage


def build(recipe: Recipe, base_dir: Path) -> list[Stage]:
    stages: list[Stage] = [GenerateStage(recipe, base_dir), CurateStage(recipe, base_dir)]
    return [*stages, PublishStage(recipe, base_dir)] if recipe.publish is not None else stages
