"""distill: generate -> curate (-> route with `route`, -> balance with `curate.balance`) -> score (with
`score`) -> train -> evaluate -> publish (with `publish`). Top-up rounds as in the curate pipeline."""

from __future__ import annotations

from pathlib import Path

from dataengine.pipelines import Pipeline
from dataengine.pipelines.curate import curated, kept_rows, top_up
from dataengine.publish.stage import PublishStage
from dataengine.recipe import Recipe
from dataengine.score.stage import ScoreStage
from dataengine.stage import Stage
from dataengine.train.evaluate_stage import EvaluateStage
from dataengine.train.stage import TrainStage


def build(recipe: Recipe, base_dir: Path) -> Pipeline:
    stages: list[Stage] = curated(recipe, base_dir)
    kept = kept_rows(stages)
    # students learn from the scored rows when the recipe scores (the teacher's logprobs ride along)
    rows = kept
    if recipe.score is not None:
        stages.append(ScoreStage(recipe, base_dir, rows_from=kept))
        rows = "scored"
    student = recipe.train.student
    merge = student.from_teacher.merge_experts if student.from_teacher else None
    route = next((s for s in stages if s.name == "route"), None)
    routing = route.outputs["map"] if route is not None and merge in ("routing", "top") else None
    train = TrainStage(recipe, base_dir, rows_from=rows, routing_from=routing)
    student_dir = train.outputs["student"]
    stages += [train, EvaluateStage(recipe, base_dir, rows_from=rows, student_from=student_dir, routing_from=routing)]
    if recipe.publish is not None:
        stages.append(PublishStage(recipe, base_dir, rows_from=kept, student_from=student_dir, evaluation_from="eval"))
    return Pipeline(stages, next_round=top_up(recipe))
