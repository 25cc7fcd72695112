"""Top-up rounds: when curation keeps fewer rows than the recipe asked for in a kind/language (under
`top_up.enough` of them), ask the teacher for more prompts there, a bounded number of times.

The rounds are recorded in `<run>/top_up.json`; the generate stage reads them (each round has its own
datatrove work folder, so the finished rounds are never generated again), and the pipelines that compose
generate and curate run the stages again after adding one.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from dataengine.atomic import write_atomic
from dataengine.manifest import Manifest
from dataengine.recipe import Recipe
from dataengine.results import CurateStats, GenerateStats, JudgeStats
from dataengine.rows import Group, queries
from dataengine.run_folder import RunFolder


def load_rounds(run_dir: Path) -> list[dict[str, int]]:
    path = RunFolder(run_dir).top_up
    return json.loads(path.read_text())["rounds"] if path.is_file() else []


def rollouts(recipe: Recipe, group: Group) -> int:
    gen = recipe.generate
    if group.kind == "chat" and gen.chat:
        return gen.chat.rollouts
    if group.kind == "math" and gen.math:
        return gen.math.rollouts
    return gen.code.rollouts if gen.code else 1


def plan_round(
    recipe: Recipe, generated: Manifest, curated: Manifest, judged: Manifest | None = None
) -> dict[str, int]:
    """Extra prompts per short group (one that kept less than `top_up.enough` of its target): the rows still
    missing divided by the group's keep rate so far (at least 1 / max_factor, so a group where nothing survived
    asks max_factor times its shortfall). With a judge, a row is kept when the judge kept it too."""
    made = GenerateStats.of(generated).rows_by_kind_language
    judge = JudgeStats.of(judged)
    quota = CurateStats.of(curated).quota
    kept = judge.kept_by_kind_language if judge is not None else {group: q.kept for group, q in quota.items()}
    groups = pl.LazyFrame(
        {
            "group": list(quota),
            "target": [q.target for q in quota.values()],
            "kept": [kept.get(group, 0) for group in quota],
            "made": [made.get(group, 0) for group in quota],
            "rollouts": [rollouts(recipe, Group.parse(group)) for group in quota],
        },
        schema={"group": pl.String, "target": pl.Int64, "kept": pl.Int64, "made": pl.Int64, "rollouts": pl.Int64},
    )
    top_up = recipe.generate.top_up
    return queries.shortfall(groups, top_up.max_factor, top_up.enough)


def add_round(
    recipe: Recipe, run_dir: Path, generated: Manifest | None, curated: Manifest | None, judged: Manifest | None
) -> dict[str, int] | None:
    """Record the next round and return it, or None: no curation yet, nothing short, or no rounds left. The
    pipeline hands over the manifests of the stages that generated, curated and (or None) judged."""
    rounds = load_rounds(run_dir)
    if generated is None or curated is None or len(rounds) >= recipe.generate.top_up.rounds:
        return None
    extra = plan_round(recipe, generated, curated, judged)
    if not extra:
        return None
    rounds.append(extra)
    write_atomic(RunFolder(run_dir).top_up, json.dumps({"rounds": rounds}, indent=2))
    return extra
