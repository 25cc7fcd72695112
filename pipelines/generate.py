"""generate: the teacher writes multilingual chat and code samples (curation and training come later)."""

from __future__ import annotations

from pathlib import Path

from dataengine import GenerateStage, Pipeline, Recipe


def build(recipe: Recipe, base_dir: Path) -> Pipeline:
    return Pipeline([GenerateStage(recipe, base_dir)])
