"""distill: generate -> curate (-> route with `route`, -> balance with `curate.balance`) -> score (with
`score`) -> train -> evaluate -> publish (with `publish`). Top-up rounds as in the curate pipeline: they end
before routing and training, which run once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dataengine import EvaluateStage, Pipeline, PublishStage, Recipe, ScoreStage, Stage, TrainStage
from pipelines.curate import curated, kept_rows, pairs, round_after, top_up


def build(recipe: Recipe, base_dir: Path) -> Pipeline:
    stages: list[Stage] = curated(recipe, base_dir)
    kept = kept_rows(stages)
    # students learn from the scored rows when the recipe scores (the teacher's logprobs ride along)
    rows = kept
    if recipe.score is not None:
        stages.append(ScoreStage(recipe, base_dir, rows_from=kept))
        rows = "scored"
    # a student made from the experts scored by how the rows route reads the route stage's map (it counts
    # every curated row); evaluate takes the untrained student from train and builds the compared inits itself
    route = next((s for s in stages if s.name == "route"), None)
    routing = route.outputs["map"] if route is not None else None
    student, compared = recipe.train.student, recipe.train.evaluate.compare_inits
    preference = pairs(stages)
    train = TrainStage(
        recipe,
        base_dir,
        rows_from=rows,
        routing_from=routing if _reads_map(student) else None,
        preference_from=preference if recipe.train.dpo is not None else None,
    )
    student_dir = train.outputs["student"]
    evaluate_map = routing if any(_reads_map(s) for s in compared) else None
    stages += [
        train,
        EvaluateStage(
            recipe,
            base_dir,
            rows_from=rows,
            student_from=student_dir,
            init_from=train.outputs["init"],
            routing_from=evaluate_map,
            before_dpo_from=train.outputs.get("before_dpo"),
        ),
    ]
    if recipe.publish is not None:
        stages.append(
            PublishStage(
                recipe,
                base_dir,
                rows_from=kept,
                student_from=student_dir,
                evaluation_from="eval",
                preference_from=preference,
            )
        )
    return Pipeline(stages, next_round=top_up(recipe), round_after=round_after(stages))


def check(recipe: Recipe) -> list[str]:
    """What this pipeline cannot run without."""
    return (
        ["pipeline distill needs `curate` and `train` blocks"] if recipe.curate is None or recipe.train is None else []
    )


def _reads_map(student: Any) -> bool:  # a train.student or compare_inits entry
    made = student.from_teacher
    if made is None or made.expert_score != "frequency":
        return False
    return made.keep_experts is not None or made.merge_experts in ("routing", "top")
