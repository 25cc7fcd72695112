"""curate: the teacher writes samples, then datatrove filters, dedups and decontaminates them."""

from __future__ import annotations

from pathlib import Path

from dataengine.curate.stage import CurateStage
from dataengine.generate.stage import GenerateStage
from dataengine.recipe import Recipe
from dataengine.runner import Stage


def build(recipe: Recipe, base_dir: Path) -> list[Stage]:
    return [GenerateStage(recipe, base_dir), CurateStage(recipe, base_dir)]
