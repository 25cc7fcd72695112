"""generate: the teacher writes multilingual chat and code samples (curation and training come later)."""

from __future__ import annotations

from pathlib import Path

from dataengine import GenerateStage, Pipeline, Recipe


def build(recipe: Recipe, base_dir: Path) -> Pipeline:
    return Pipeline([GenerateStage(recipe, base_dir)])


def check(recipe: Recipe) -> list[str]:
    """Blocks this pipeline would silently not run."""
    unused = {
        "route": "route replays the curated rows",
        "curate.judge": "curate.judge rates the curated rows",
        "publish": "publish sends the curated rows",
    }
    given = {
        "route": recipe.route is not None,
        "curate.judge": recipe.curate is not None and recipe.curate.judge is not None,
        "publish": recipe.publish is not None,
    }
    problems = [f"{what}: it needs pipeline curate or distill" for block, what in unused.items() if given[block]]
    if recipe.generate is None:
        problems.append("pipeline generate needs a `generate` block (rows brought with `ingest` are curated)")
    return problems
