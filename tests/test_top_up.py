"""Top-up planning: how many more prompts, where, and how often."""

from __future__ import annotations

import json

import polars as pl
import pytest

from dataengine.curate.stage import _targets
from dataengine.errors import RecipeError
from dataengine.generate.seeds import expand_seeds, top_up_seeds
from dataengine.generate.top_up import add_round, load_rounds, plan_round
from dataengine.manifest import Manifest
from dataengine.recipe import parse_recipe
from dataengine.results import CurateStats, GenerateStats, JudgeStats, Quota
from dataengine.rows import Group
from dataengine.rows.queries import shortfall
from dataengine.run_folder import TOP_UP as TOP_UP_FILE

RECIPE = """
name: t
pipeline: curate
teacher: {model: builtin:smollm2-moe}
generate:
  chat:
    languages: [{code: en, quota: 4}, {code: fr, quota: 4}]
    rollouts: 2
  code: {count: 4}
  top_up: {rounds: 2, max_factor: 3}
curate: {}
"""


def manifests(kept: dict[str, int], made: dict[str, int]) -> dict[str, Manifest]:
    targets = {"chat/en": 8, "chat/fr": 8, "code/en": 4}
    quota = {g: Quota(target=t, kept=kept[g], short=max(0, t - kept[g])) for g, t in targets.items()}
    generated = GenerateStats(prompts=sum(made.values()), rows_by_kind_language=made).model_dump()
    curated = CurateStats(quota=quota).model_dump()
    return {
        "generate": Manifest("generate", "", "", "", 20, 20, stats=generated),
        "curate": Manifest("curate", "", "", "", 20, sum(kept.values()), stats=curated),
    }


def next_round(recipe, run_dir, m: dict[str, Manifest]) -> dict[str, int] | None:
    return add_round(recipe, run_dir, m["generate"], m["curate"], m.get("judge"))


def test_plan_asks_for_missing_rows_over_keep_rate():
    recipe = parse_recipe(RECIPE)
    m = manifests(kept={"chat/en": 8, "chat/fr": 4, "code/en": 0}, made={"chat/en": 8, "chat/fr": 8, "code/en": 4})
    extra = plan_round(recipe, m["generate"], m["curate"])
    # fr: 4 rows short at a keep rate of 1/2 -> 8 rows -> 4 prompts of 2 rollouts; en is complete
    # code: nothing kept -> keep rate floor 1/3 -> 12 rows -> 12 prompts of 1 rollout
    assert extra == {"chat/fr": 4, "code/en": 12}


def test_with_a_judge_a_row_counts_as_kept_when_the_judge_kept_it(tmp_path):
    recipe = parse_recipe(RECIPE)
    m = manifests(kept={"chat/en": 8, "chat/fr": 4, "code/en": 4}, made={"chat/en": 8, "chat/fr": 8, "code/en": 4})
    # the judge kept 4 of curation's 8 English rows, all of French and code
    judged = {"chat/en": 4, "chat/fr": 4, "code/en": 4}
    stats = JudgeStats(
        judge_model="j", threshold=3, score_histogram={}, mean_by_criterion={}, kept_by_kind_language=judged
    )
    m["judge"] = Manifest("judge", "", "", "", 16, 12, stats=stats.model_dump())
    # en: 4 short at a keep rate of 4/8 -> 8 rows -> 4 prompts; fr as before
    assert plan_round(recipe, m["generate"], m["curate"], m["judge"]) == {"chat/en": 4, "chat/fr": 4}
    assert next_round(recipe, tmp_path, m) == {"chat/en": 4, "chat/fr": 4}


def test_rounds_are_recorded_and_bounded(tmp_path):
    recipe = parse_recipe(RECIPE)
    short = manifests(kept={"chat/en": 8, "chat/fr": 4, "code/en": 4}, made={"chat/en": 8, "chat/fr": 8, "code/en": 4})
    assert next_round(recipe, tmp_path, short) == {"chat/fr": 4}
    assert next_round(recipe, tmp_path, short) == {"chat/fr": 4}
    assert next_round(recipe, tmp_path, short) is None  # rounds: 2
    assert load_rounds(tmp_path) == [{"chat/fr": 4}, {"chat/fr": 4}]
    assert json.loads((tmp_path / TOP_UP_FILE).read_text())["rounds"][0] == {"chat/fr": 4}


def test_no_round_when_nothing_is_short_or_top_up_is_off(tmp_path):
    full = manifests(kept={"chat/en": 8, "chat/fr": 8, "code/en": 4}, made={"chat/en": 8, "chat/fr": 8, "code/en": 4})
    assert next_round(parse_recipe(RECIPE), tmp_path, full) is None
    off = parse_recipe(RECIPE.replace("rounds: 2", "rounds: 0"))
    short = manifests(kept={"chat/en": 0, "chat/fr": 0, "code/en": 0}, made={"chat/en": 8, "chat/fr": 8, "code/en": 4})
    assert next_round(off, tmp_path, short) is None
    assert not (tmp_path / TOP_UP_FILE).exists()


def test_enough_leaves_groups_that_kept_that_share_of_their_target(tmp_path):
    recipe = parse_recipe(RECIPE.replace("max_factor: 3}", "max_factor: 3, enough: 0.5}"))
    # en kept half its target (enough), fr one row under half, code none: fr and code ask for their whole shortfall
    m = manifests(kept={"chat/en": 4, "chat/fr": 3, "code/en": 0}, made={"chat/en": 8, "chat/fr": 8, "code/en": 4})
    # fr: 5 short at a keep rate of 3/8 -> 14 rows -> 7 prompts of 2 rollouts; code: 4 short at the floor 1/3 -> 12
    assert plan_round(recipe, m["generate"], m["curate"]) == {"chat/fr": 7, "code/en": 12}
    half = manifests(kept={"chat/en": 4, "chat/fr": 4, "code/en": 2}, made={"chat/en": 8, "chat/fr": 8, "code/en": 4})
    assert next_round(recipe, tmp_path, half) is None
    assert next_round(parse_recipe(RECIPE), tmp_path, half) == {"chat/en": 4, "chat/fr": 4, "code/en": 4}


def test_enough_holds_at_its_exact_share_and_leaves_empty_targets_alone():
    # 0.55 * 100 is 55.00000000000001 in floats: a group that kept exactly 55 of 100 kept enough
    groups = pl.LazyFrame(
        {
            "group": ["chat/en", "chat/fr", "chat/de"],
            "target": [100, 100, 0],
            "kept": [55, 54, 0],
            "made": [100] * 3,
            "rollouts": [1] * 3,
        }
    )
    assert shortfall(groups, max_factor=3, enough=0.55) == {"chat/fr": 86}  # 46 short / 0.54 kept


def test_the_first_round_asks_its_prompts_and_top_up_rounds_their_own():
    recipe = parse_recipe(RECIPE.replace("{code: fr, quota: 4}", "{code: fr, quota: 4, prompts: 10}"))
    asked = [(s.kind, s.language) for s in expand_seeds(recipe.generate, None)]
    assert (asked.count(("chat", "en")), asked.count(("chat", "fr"))) == (4, 10)
    # curation still counts against the quota: 4 prompts of 2 rollouts
    assert _targets(recipe)[Group("chat", "fr")] == 8
    m = manifests(kept={"chat/en": 8, "chat/fr": 5, "code/en": 4}, made={"chat/en": 8, "chat/fr": 20, "code/en": 4})
    # fr: 3 short at a keep rate of 5/20, under the floor 1/3 -> 9 rows -> 5 prompts; a round asks those, not `prompts`
    assert plan_round(recipe, m["generate"], m["curate"]) == {"chat/fr": 5}
    extra = [(s.kind, s.language) for s in top_up_seeds(recipe.generate, {"chat/fr": 5}, round=1)]
    assert extra == [("chat", "fr")] * 5


def test_math_languages_ask_their_prompts_first_and_their_shortfall_after():
    math = "  math:\n    languages: [{code: en, quota: 2, prompts: 5}]\n    rollouts: 3\n"
    recipe = parse_recipe(RECIPE.replace("  top_up:", math + "  top_up:"))
    asked = [s for s in expand_seeds(recipe.generate, None) if s.kind == "math"]
    assert len(asked) == 5 and {s.rollouts for s in asked} == {3}
    assert _targets(recipe)[Group("math", "en")] == 6
    assert [s.kind for s in top_up_seeds(recipe.generate, {"math/en": 2}, round=1)] == ["math", "math"]


def test_prompts_below_the_quota_are_refused_with_where():
    with pytest.raises(RecipeError) as refused:
        parse_recipe(RECIPE.replace("{code: fr, quota: 4}", "{code: fr, quota: 4, prompts: 3}"))
    assert "generate.chat.languages[1]: prompts (3) must be at least the quota (4)" in str(refused.value)
    with pytest.raises(RecipeError) as refused:
        parse_recipe(RECIPE.replace("{code: fr, quota: 4}", "{code: fr, quota: 0, prompts: 3}"))
    assert "generate.chat.languages[1]: prompts (3) asks for rows of a language whose quota is 0" in str(refused.value)


def test_top_up_prompts_are_new_samples():
    gen = parse_recipe(RECIPE).generate
    base = {s.key for s in expand_seeds(gen, None)}
    extra = list(top_up_seeds(gen, {"chat/fr": 3, "code/en": 2}, round=1))
    assert [(s.kind, s.language) for s in extra].count(("chat", "fr")) == 3
    assert [(s.kind, s.language) for s in extra].count(("code", "en")) == 2
    assert not any(s.kind == "chat" and s.language == "en" for s in extra)
    assert not base & {s.key for s in extra}  # distinct ids even where a topic is drawn again
    again = top_up_seeds(gen, {"chat/fr": 3, "code/en": 2}, round=2)
    assert not {s.key for s in extra} & {s.key for s in again}


def test_rounds_rerun_the_stages_up_to_curation_and_the_rest_once(tmp_path, monkeypatch):
    """Routing, scoring and training run after the last round, on what it kept, not after every round."""
    from types import SimpleNamespace

    from rich.console import Console

    from dataengine import runner
    from dataengine.pipeline import Pipeline

    ran: list[list[str]] = []

    def run_stages(pipeline, stages, ctx, only, force):
        ran.append([s.name for s in stages])
        return {s.name: s.name for s in stages}

    monkeypatch.setattr(runner, "_run_stages", run_stages)
    stages = [SimpleNamespace(name=n) for n in ("generate", "curate", "route", "score", "train")]
    asked = iter(["one more", "one more", None])
    pipeline = Pipeline(stages, next_round=lambda run_dir, made: next(asked), round_after="curate")
    ctx = SimpleNamespace(run_dir=tmp_path, console=Console(quiet=True))
    manifests = runner._run_rounds(pipeline, ctx, None, None)
    assert ran == [["generate", "curate"]] * 3 + [["route", "score", "train"]]
    assert list(manifests) == ["generate", "curate", "route", "score", "train"]
    # --stage runs no rounds
    ran.clear()
    runner._run_rounds(pipeline, ctx, ["train"], None)
    assert ran == [["generate", "curate"], ["route", "score", "train"]]


def test_the_pipelines_round_after_curation_or_the_judge(tmp_path):
    from dataengine.pipeline import build_pipeline as build

    recipe = parse_recipe(RECIPE)
    assert build(recipe, tmp_path).round_after == "curate"
    judged = parse_recipe(RECIPE.replace("curate: {}", "curate: {judge: {}}"))
    assert build(judged, tmp_path).round_after == "judge"
