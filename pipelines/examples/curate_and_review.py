"""The shipped curate pipeline (pipelines/curate.py) with one stage of your own added: a sample of the kept rows
for a person to read (review_sample.py). Point a recipe at this file: `pipeline: curate_and_review.py`.
"""

from __future__ import annotations

from pathlib import Path

from review_sample import ReviewSample  # this folder is on the path while the pipeline is loaded

from dataengine import Pipeline, PublishStage, Recipe
from pipelines.curate import curated, kept_rows, pairs, round_after, top_up


def build(recipe: Recipe, base_dir: Path) -> Pipeline:
    stages = curated(recipe, base_dir)
    stages.append(ReviewSample(recipe, rows_from=kept_rows(stages)))  # the line added to pipelines/curate.py
    if recipe.publish is not None:
        stages.append(PublishStage(recipe, base_dir, rows_from=kept_rows(stages), preference_from=pairs(stages)))
    return Pipeline(stages, next_round=top_up(recipe), round_after=round_after(stages))
