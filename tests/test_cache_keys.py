"""Cache keys are derived from the schema: every field of a recipe either changes the key of the stage that owns
it or is marked output-neutral. The walk covers the whole schema, so a field added tomorrow is covered too."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from dataengine.pipeline import build_pipeline
from dataengine.recipe import Recipe, parse_recipe
from dataengine.stage import recipe_key
from tests.conftest import MINIMAL

# every block and every stage: distill with judge pairs, routing, balance, score, DPO and publish
FULL = """
name: t
pipeline: distill
teacher:
  model: builtin:smollm2-moe
generate:
  chat:
    rollouts: 2
    languages:
      - {code: en, quota: 2}
curate:
  judge: {pairs: {}}
  balance: {rows: 2}
route: {}
score: {top_k: 4}
train:
  student: {model: x}
  dpo: {}
publish: {to: out, append: false}
schedule: {cron: "0 2 * * *", incremental: false}
"""


# the rows brought instead of generated: the same blocks after it
FULL_INGEST = (
    FULL.replace(
        "generate:\n  chat:\n    rollouts: 2\n    languages:\n      - {code: en, quota: 2}\n",
        "ingest:\n  sources: [{dataset: org/conversations}]\n",
    )
    .replace("judge: {pairs: {}}", "judge: {}")
    .replace("  dpo: {}\n", "")
)


def _models(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The model class a field holds (directly, optionally, or as list items) and whether it is a list."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        found = [_models(a) for a in typing.get_args(annotation) if a is not type(None)]
        return next((f for f in found if f[0] is not None), (None, False))
    if origin is list:
        inner, _ = _models(typing.get_args(annotation)[0])
        return inner, inner is not None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    return None, False


def leaf_paths(model: type[BaseModel], prefix: tuple = ()) -> list[tuple[tuple, bool]]:
    """(path, marked output-neutral on the way) for every leaf field; "[]" steps into a list's first item."""
    out = []
    for name, info in model.model_fields.items():
        marks = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        inner, is_list = _models(info.annotation)
        path = (*prefix, name, "[]") if is_list else (*prefix, name)
        if "output_neutral" in marks:
            out.append((path, True))
        elif inner is not None:
            out += [(p, neutral) for p, neutral in leaf_paths(inner, path)]
        else:
            out.append((path, False))
    return out


def _blank(model: type[BaseModel]) -> BaseModel:
    """An instance without validation: defaults, and a placeholder for each required field."""
    values = {}
    for name, info in model.model_fields.items():
        if info.is_required():
            inner, is_list = _models(info.annotation)
            values[name] = [] if is_list else (_blank(inner) if inner is not None else "x")
    return model.model_construct(**values)


def with_value(model: BaseModel, path: tuple, value: Any) -> BaseModel:
    """`model` with the field at `path` set to `value` (blocks on the way created when absent)."""
    head, rest = path[0], path[1:]
    current = getattr(model, head)
    if not rest:
        return model.model_copy(update={head: value})
    inner, is_list = _models(type(model).model_fields[head].annotation)
    if is_list:
        items = list(current) or [_blank(inner)]
        return model.model_copy(update={head: [with_value(items[0], rest[1:], value), *items[1:]]})
    return model.model_copy(update={head: with_value(current if current is not None else _blank(inner), rest, value)})


def keys(path: tuple) -> tuple[dict[str, str], dict[str, str]]:
    """Every stage's key with two different values at `path` (the blocks on the way made alike in both)."""
    recipe = parse_recipe(FULL_INGEST if path[0] == "ingest" else FULL)
    stages = build_pipeline(recipe, Path.cwd()).stages
    one, other = with_value(recipe, path, "one value"), with_value(recipe, path, "another value")
    return (
        {s.name: recipe_key(one, s.reads, s.name) for s in stages},
        {s.name: recipe_key(other, s.reads, s.name) for s in stages},
    )


PATHS = leaf_paths(Recipe)


def test_the_walk_covers_the_schema():
    names = {".".join(p) for p, _ in PATHS}
    assert {"teacher.recovery", "curate.judge.threshold", "generate.sources.[].path", "train.sft.lora.r"} <= names
    assert "ingest.sources.[].messages_field" in names
    assert "dataset: org/conversations" in FULL_INGEST and "generate:" not in FULL_INGEST
    assert len(PATHS) > 150


@pytest.mark.parametrize("path", [p for p, neutral in PATHS if not neutral], ids=lambda p: ".".join(p))
def test_every_field_changes_the_key_of_the_stage_that_owns_it(path):
    before, after = keys(path)
    moved = {name for name in before if before[name] != after[name]}
    owners = {"judge": "judge", "balance": "balance"}
    owner = owners.get(path[1]) if path[0] == "curate" and len(path) > 1 else None
    owner = owner or path[0]
    if owner == "train":  # train.evaluate is the evaluate stage's; the rest the trainer's
        assert moved & {"train", "evaluate"}, path
    elif owner in before:
        assert owner in moved, f"{'.'.join(path)} changes no key of stage {owner!r} (changed: {moved})"
    else:  # the teacher and the run's own fields: some stage reads them, or they are marked output-neutral
        assert moved, f"{'.'.join(path)} changes no stage's key: read it in a stage or mark it output-neutral"


@pytest.mark.parametrize("path", [p for p, neutral in PATHS if neutral], ids=lambda p: ".".join(p))
def test_an_output_neutral_field_changes_no_key(path):
    before, after = keys(path)
    # a stage may read an output-neutral field by its own path, on purpose (curate reads curate.tasks)
    recipe = parse_recipe(FULL_INGEST if path[0] == "ingest" else FULL)
    on_purpose = {s.name for s in build_pipeline(recipe, Path.cwd()).stages if ".".join(path) in s.reads}
    assert {k: v for k, v in before.items() if k not in on_purpose} == {
        k: v for k, v in after.items() if k not in on_purpose
    }


def test_a_sub_block_of_another_stage_leaves_the_owners_key_alone():
    recipe = parse_recipe(FULL)
    changed = with_value(recipe, ("curate", "judge", "threshold"), 4.0)
    assert recipe_key(recipe, ["curate"], "curate") == recipe_key(changed, ["curate"], "curate")
    assert recipe_key(recipe, ["curate.judge"], "judge") != recipe_key(changed, ["curate.judge"], "judge")
    # a stage that reads another's block whole (publish's card) sees every field of it
    assert recipe_key(recipe, ["curate"], "publish") != recipe_key(changed, ["curate"], "publish")


def test_a_path_the_schema_lacks_is_refused():
    with pytest.raises(KeyError, match="no recipe path 'generate.nope'"):
        recipe_key(parse_recipe(FULL), ["generate.nope"], "generate")


def _finish(recipe: Recipe, run_dir: Path) -> None:
    """Manifests for every stage, as a finished run leaves them (the stages' own work is not needed here)."""
    from dataengine.manifest import Manifest
    from dataengine.runner import _Wiring
    from dataengine.stage import config_hash

    stages = build_pipeline(recipe, run_dir).stages
    wiring = _Wiring(stages, run_dir)
    for stage in stages:
        for output in stage.outputs.values():
            (run_dir / output).mkdir(parents=True, exist_ok=True)
        folder = run_dir / next(iter(stage.outputs.values()))
        inputs = wiring.input_fingerprint(stage)
        Manifest(stage.name, config_hash(stage, recipe), inputs, f"out-{stage.name}", 1, 1).write(folder)


@pytest.mark.parametrize(
    "change",
    [
        "teacher:\n  model: builtin:smollm2-moe\n  recovery: {backoff_s: 60}\n",
        "teacher:\n  model: builtin:smollm2-moe\n  vllm: {startup_timeout_s: 60}\n",
        "curate:\n  workers: 2\n  judge: {pairs: {}}\n  balance: {rows: 2}\n",
    ],
    ids=["teacher.recovery.backoff_s", "teacher.vllm.startup_timeout_s", "curate.workers"],
)
def test_plan_after_an_output_neutral_change_says_every_stage_is_done(tmp_path, change):
    from dataengine.runner import plan

    recipe = parse_recipe(FULL)
    _finish(recipe, tmp_path)
    assert {status for _, status in plan(recipe, tmp_path, tmp_path)} == {"done"}
    block = change.split(":", 1)[0]
    start = FULL.index(f"\n{block}:") + 1
    end = next(i for i in range(start + 1, len(FULL)) if FULL[i - 1] == "\n" and FULL[i] not in " \n")
    edited = parse_recipe(FULL[:start] + change + FULL[end:])
    assert edited != recipe
    assert [(stage.name, status) for stage, status in plan(edited, tmp_path, tmp_path)] == [
        (stage.name, "done") for stage, _ in plan(recipe, tmp_path, tmp_path)
    ]


def test_plan_after_a_change_to_the_data_reruns_from_the_stage_that_reads_it(tmp_path):
    from dataengine.runner import plan

    recipe = parse_recipe(FULL)
    _finish(recipe, tmp_path)
    edited = parse_recipe(FULL.replace("route: {}", "route: {cold_below: 0.5}"))
    statuses = [(stage.name, status) for stage, status in plan(edited, tmp_path, tmp_path)]
    first = next(i for i, (_, status) in enumerate(statuses) if status != "done")
    assert statuses[first][0] == "route" and all(status == "stale" for _, status in statuses[first:])


def test_a_stage_whose_output_is_gone_runs_again(tmp_path):
    """A run folder of an older version lacks what a stage writes today (train's students/<name>-init/, which
    evaluate reads): train runs again (its work folder makes that quick), and what follows it."""
    import shutil

    from dataengine.runner import plan

    recipe = parse_recipe(FULL)
    _finish(recipe, tmp_path)
    train = next(stage for stage in build_pipeline(recipe, tmp_path).stages if stage.name == "train")
    shutil.rmtree(tmp_path / train.outputs["init"])
    statuses = [(stage.name, status) for stage, status in plan(recipe, tmp_path, tmp_path)]
    first = next(i for i, (_, status) in enumerate(statuses) if status != "done")
    assert statuses[first] == ("train", "stale") and all(status == "stale" for _, status in statuses[first:])


def test_generate_keys_and_so_row_ids_did_not_move():
    """Every generated row's id holds generate's key: the key of a recipe that did not change must not change
    when the way keys are derived does (this figure is what commit cdd3393's hand-kept paths gave)."""
    from dataengine.generate.stage import GenerateStage
    from dataengine.stage import config_hash

    recipe = parse_recipe(MINIMAL + "  sampling: {temperature: 0.3}\n  tasks: 2\n")
    assert config_hash(GenerateStage(recipe, Path.cwd()), recipe) == "a18444377a33edab"
