"""generate: the teacher writes multilingual chat and code samples (curation and training come later)."""

from __future__ import annotations

from pathlib import Path

from dataengine.generate.stage import GenerateStage
from dataengine.recipe import Recipe
from dataengine.runner import Stage


def build(recipe: Recipe, base_dir: Path) -> list[Stage]:
    return [GenerateStage(recipe, base_dir)]
