"""Named pipelines: each module's `build(recipe, base_dir) -> Pipeline` picks the stages a recipe runs and
wires them, folder to folder. Recipes pick one with `pipeline:`. This is the only layer that knows which
stage reads which other stage's output."""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dataengine.balance.stage import BalanceStage
from dataengine.curate.stage import CurateStage
from dataengine.generate.stage import GenerateStage
from dataengine.judge.stage import JudgeStage
from dataengine.manifest import Manifest
from dataengine.publish.stage import PublishStage
from dataengine.recipe import BUILTIN_PREFIX, Recipe
from dataengine.route.stage import RouteStage
from dataengine.score.stage import ScoreStage
from dataengine.stage import Stage
from dataengine.teacher.builtin import name_problem, weights_problem
from dataengine.train.evaluate_stage import EvaluateStage
from dataengine.train.stage import TrainStage

# Every kind of stage: each checks its own block of a recipe, whichever pipeline the recipe picks
STAGES = (
    GenerateStage,
    CurateStage,
    JudgeStage,
    RouteStage,
    BalanceStage,
    ScoreStage,
    TrainStage,
    EvaluateStage,
    PublishStage,
)

# After a pass over the stages: what to ask for in one more pass (a line for the log), or None when done.
NextRound = Callable[[Path, dict[str, Manifest]], str | None]


@dataclass
class Pipeline:
    stages: list[Stage]
    next_round: NextRound | None = None  # e.g. top-up: more prompts where curation fell short
    # the stage whose pass `next_round` reads: the rounds run the stages up to it, and the later stages (routing,
    # training) run once, on what the last round kept; None: after the whole pipeline
    round_after: str | None = None


def available_pipelines() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def build(recipe: Recipe, base_dir: Path) -> Pipeline:
    return importlib.import_module(f"{__name__}.{recipe.pipeline}").build(recipe, base_dir)


def name_problems(recipe: Recipe) -> list[str]:
    """The recipe names a pipeline and (for builtin:<name>) a teacher that exist: what every command needs."""
    known = available_pipelines()
    if recipe.pipeline not in known:
        hint = difflib.get_close_matches(recipe.pipeline, known, n=1)
        extra = f"; did you mean {hint[0]!r}?" if hint else ""
        return [f"pipeline: unknown pipeline {recipe.pipeline!r}{extra} (available: {', '.join(known)})"]
    return [f"teacher.model: {problem}"] if (problem := name_problem(recipe.teacher.model)) else []


def check(recipe: Recipe, base_dir: Path) -> list[str]:
    """What the schema alone cannot see: the names above, each stage's own check of its block (shipped data,
    local tokenizers), and last the builtin teacher's weights on this machine. No downloads, no files written."""
    if problems := name_problems(recipe):
        return problems
    problems = [p for stage in STAGES for p in stage.check(recipe, base_dir)]
    # last: the other problems are the recipe's, this one the machine's
    builtin = recipe.teacher.model.removeprefix(BUILTIN_PREFIX) if recipe.teacher.is_builtin else None
    if not problems and builtin and (problem := weights_problem(builtin, recipe.teacher.builtin)):
        problems.append(problem)
    return problems
