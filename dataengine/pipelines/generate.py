"""generate: the teacher writes multilingual chat and code samples (curation and training come later)."""

from __future__ import annotations

from pathlib import Path

from dataengine.generate.stage import GenerateStage
from dataengine.pipelines import Pipeline
from dataengine.recipe import Recipe


def build(recipe: Recipe, base_dir: Path) -> Pipeline:
    return Pipeline([GenerateStage(recipe, base_dir)])
