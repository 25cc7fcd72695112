"""Top-up rounds: when curation keeps fewer rows than the recipe asked for in a kind/language, ask the
teacher for more prompts there, a bounded number of times.

The rounds are recorded in `<run>/top_up.json`; the generate stage reads them (each round has its own
datatrove work folder, so the finished rounds are never generated again), and the pipelines that compose
generate and curate run the stages again after adding one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from dataengine.atomic import write_atomic
from dataengine.manifest import Manifest
from dataengine.recipe import Recipe
from dataengine.results import CurateStats, GenerateStats, JudgeStats
from dataengine.rows import Group
from dataengine.run_folder import RunFolder


def load_rounds(run_dir: Path) -> list[dict[str, int]]:
    path = RunFolder(run_dir).top_up
    return json.loads(path.read_text())["rounds"] if path.is_file() else []


def rollouts(recipe: Recipe, group: Group) -> int:
    gen = recipe.generate
    if group.kind == "chat" and gen.chat:
        return gen.chat.rollouts
    return gen.code.rollouts if gen.code else 1


def plan_round(
    recipe: Recipe, generated: Manifest, curated: Manifest, judged: Manifest | None = None
) -> dict[str, int]:
    """Extra prompts per short group: the rows still missing divided by the group's keep rate so far
    (at least 1 / max_factor, so a group where nothing survived asks max_factor times its shortfall). With a
    judge, a row is kept when the judge kept it too."""
    cfg = recipe.generate.top_up
    made = GenerateStats.of(generated).rows_by_kind_language
    judge = JudgeStats.of(judged)
    extra = {}
    for group, quota in CurateStats.of(curated).quota.items():
        kept = judge.kept_by_kind_language.get(group, 0) if judge is not None else quota.kept
        short = quota.target - kept
        if short <= 0:
            continue
        keep_rate = max(kept / made[group] if made.get(group) else 0.0, 1.0 / cfg.max_factor)
        rows = math.ceil(short / keep_rate)
        extra[group] = math.ceil(rows / rollouts(recipe, Group.parse(group)))
    return extra


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
