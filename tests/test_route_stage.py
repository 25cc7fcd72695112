"""The route stage on a tiny random Mixtral teacher: every kept and rejected row routed, the map adds up
from the rows' signatures, and a rerun or another batch size routes the same."""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from dataengine.cli import app
from dataengine.errors import RecipeError
from dataengine.experts import metrics
from dataengine.pipeline import build_pipeline as build
from dataengine.recipe import parse_recipe
from dataengine.route.stage import RouteStage
from dataengine.rows import CURATED_FEATURES, read_rows, write_shards
from dataengine.run_folder import ROUTING_MAP_FILE, RunFolder
from dataengine.stage import RunContext
from tests.tiny_models import rows, save, tiny_llama, tiny_mixtral, tiny_tokenizer


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    tokenizer = tiny_tokenizer()
    return save(tiny_mixtral(len(tokenizer), seed=5), tokenizer, tmp_path_factory.mktemp("teacher"))


def _run(tmp_path, teacher, batch_size: int, run_dir=None):
    recipe = parse_recipe(
        f"""
name: r
pipeline: curate
teacher: {{model: {teacher}}}
generate: {{chat: {{languages: [{{code: en, quota: 2}}]}}}}
curate: {{}}
route: {{batch_size: {batch_size}}}
"""
    )
    run_dir = run_dir or tmp_path / "run"
    if not (run_dir / "curated").exists():
        made = [dict(r, topic="t", language="en" if i % 2 else "fr") for i, r in enumerate(rows(8))]
        made[3]["kind"] = "code"
        write_shards(made[:6], run_dir / "curated", features=CURATED_FEATURES)
        write_shards(made[6:], run_dir / "rejected", features=CURATED_FEATURES)
    stage = RouteStage(recipe, tmp_path, rows_from="curated", rejected_from="rejected")
    out = run_dir / "routing"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    ctx = RunContext(recipe, tmp_path, run_dir, Console(file=io.StringIO()), "run-1", teacher=None)
    inputs = {role: run_dir / folder for role, folder in stage.inputs.items()}
    result = stage.run(inputs, {"map": out}, run_dir / ".work" / "route", ctx)
    return result, json.loads((out / ROUTING_MAP_FILE).read_text()), read_rows(out), stage, ctx


def test_every_row_is_routed_and_the_map_adds_up(tmp_path, teacher):
    result, routing_map, routed, stage, ctx = _run(tmp_path, teacher, batch_size=3)
    assert result.rows_in == 8 and result.rows_out == 8 and not result.drops
    assert sum(r["kept"] for r in routed) == 6 and routing_map["slices"]["kept"]["rejected"]["rows"] == 2
    assert (routing_map["num_layers"], routing_map["num_experts"], routing_map["top_k"]) == (2, 4, 2)
    for row in routed:  # every answer token fills top_k slots at every layer
        assert [sum(layer) for layer in row["routing_signature"]] == [2 * row["answer_tokens"]] * 2
        assert 0 < row["router_entropy"] <= math.log(4) and 0 <= row["router_margin"] <= 1
    kept = np.sum([r["routing_signature"] for r in routed if r["kept"]], axis=0)
    assert np.allclose(routing_map["overall"]["load"], metrics.load(kept), atol=1e-4)
    assert routing_map["overall"]["cv"] == pytest.approx(metrics.balance(kept)["cv"])
    assert set(routing_map["slices"]["language"]) == {"en", "fr"} and set(routing_map["slices"]["kind"]) == {
        "chat",
        "code",
    }
    assert routing_map["divergence_from"] == "en" and len(routing_map["js_divergence"]["fr"]) == 2
    assert len(list((tmp_path / "run" / ".work" / "route" / "batches").glob("*.npz"))) == 3  # 8 rows by 3
    console = Console(file=io.StringIO(), width=150)
    stage.summary(None, {"map": tmp_path / "run" / "routing"}, console)  # it reads only its map
    assert "expert load of 6 kept rows" in console.file.getvalue()


def _no_replay(*args, **kwargs):
    raise AssertionError("a saved batch was routed again")


def test_a_rerun_and_another_batch_size_route_the_same(tmp_path, teacher, monkeypatch):
    _, first, routed, _, _ = _run(tmp_path, teacher, batch_size=3)
    # the batches are kept: a rerun after a crash routes nothing again and writes the same rows
    monkeypatch.setattr("dataengine.route.replay.route_batch", _no_replay)
    _, again, rerouted, _, _ = _run(tmp_path, teacher, batch_size=3, run_dir=tmp_path / "run")
    monkeypatch.undo()
    assert rerouted == routed and again == first
    _, _, one_by_one, _, _ = _run(tmp_path / "b", teacher, batch_size=1)
    assert [r["routing_signature"] for r in one_by_one] == [r["routing_signature"] for r in routed]


def test_experts_command_shows_the_map_or_says_how_to_get_one(tmp_path, teacher):
    _, routing_map, _, _, _ = _run(tmp_path, teacher, batch_size=4)
    run_dir = tmp_path / "run"
    RunFolder(run_dir).start("r", {"curate": {"kept": "curated"}})
    result = CliRunner().invoke(app, ["experts", str(run_dir)])
    assert "no routing map: add a `route:` block" in str(result.exception)
    RunFolder(run_dir).start("r", {"curate": {"kept": "curated"}, "route": {"map": "routing"}})
    out = " ".join(CliRunner().invoke(app, ["experts", str(run_dir)], env={"COLUMNS": "160"}).output.split())
    assert "expert load of 6 kept rows" in out and "language=fr" in out and "kept=rejected" in out
    assert "divergence of each language's routing from en" in out and "random baseline" in out
    assert "routing of 0 rows returned by the teacher's vLLM with their answers, 8 replayed" in out
    section = routing_map["capacity"]
    assert section["batches"] == 1 and len(section["replicas"]) == routing_map["num_layers"]
    worst = max(section["dropped"]["1.0"])
    tokens = f"{section['tokens']:,}"
    assert f"token slots past their expert's capacity: {tokens} answer tokens in one batch (fewer than 4096)" in out
    assert f"{worst:.1%}" in out and "an EPLB-style balancer would add" in out
    as_json = CliRunner().invoke(app, ["experts", str(run_dir), "--json"]).output
    assert json.loads(as_json) == routing_map


def test_balance_keeps_the_rows_that_even_out_the_load(tmp_path, teacher):
    from dataengine.balance.stage import BalanceStage
    from dataengine.experts.select import mean_cv

    _, _, routed, _, ctx = _run(tmp_path, teacher, batch_size=4)
    recipe = ctx.recipe.model_copy(update={"curate": parse_recipe(RECIPE_WITH_BALANCE.format(teacher=teacher)).curate})
    stage = BalanceStage(recipe, tmp_path, rows_from="curated", routing_from="routing")
    run_dir = tmp_path / "run"
    outputs = {"kept": run_dir / "balanced", "rejected": run_dir / "balance_rejected"}
    for folder in outputs.values():
        folder.mkdir()
    inputs = {role: run_dir / folder for role, folder in stage.inputs.items()}
    result = stage.run(inputs, outputs, run_dir / ".work" / "balance", ctx)
    kept, left_out = read_rows(outputs["kept"]), read_rows(outputs["rejected"])
    assert result.rows_in == 6 == len(kept) + len(left_out) and len(kept) == 3  # fraction 0.5 of 6 kept rows
    assert {r["drop_reason"] for r in left_out} == {"expert_balance"} and result.drops == {"expert_balance": 3}
    signature = {r["id"]: np.array(r["routing_signature"]) for r in routed}
    assert result.stats["mean_cv_after"] == pytest.approx(float(mean_cv(sum(signature[r["id"]] for r in kept))))
    assert result.stats["mean_cv_after"] <= result.stats["mean_cv_before"]


RECIPE_WITH_BALANCE = """
name: r
pipeline: curate
teacher: {{model: {teacher}}}
generate: {{chat: {{languages: [{{code: en, quota: 2}}]}}}}
curate: {{balance: {{fraction: 0.5}}}}
route: {{}}
"""


def test_balance_needs_routing_and_one_size(teacher):
    with pytest.raises(RecipeError, match="curate.balance selects rows by how the teacher routes them"):
        parse_recipe(RECIPE_WITH_BALANCE.format(teacher=teacher).replace("route: {}\n", ""))
    with pytest.raises(RecipeError, match="exactly one of `rows` or `fraction`"):
        parse_recipe(RECIPE_WITH_BALANCE.format(teacher=teacher).replace("fraction: 0.5", "rows: 2, fraction: 0.5"))
    pipeline = build(parse_recipe(RECIPE_WITH_BALANCE.format(teacher=teacher)), Path("."))
    assert [s.name for s in pipeline.stages] == ["generate", "curate", "route", "balance"]


def test_a_dense_teacher_cannot_be_routed(tmp_path):
    dense = save(tiny_llama(len(tiny_tokenizer())), tiny_tokenizer(), tmp_path / "dense")
    recipe = parse_recipe(RECIPE_WITH_BALANCE.format(teacher=dense))
    assert RouteStage.check(recipe, tmp_path) == [
        f"route: teacher {dense} is not a Mixture-of-Experts model (no experts in its config)"
    ]


def test_signatures_are_read_as_one_array(tmp_path):
    from dataengine.rows import ROUTED_FEATURES, read_matrices

    made = [{"id": f"r{i}", "routing_signature": np.full((2, 3), i, dtype=np.int32)} for i in range(3)]
    write_shards(made, tmp_path / "routing", features=ROUTED_FEATURES)
    ids, signatures = read_matrices(tmp_path / "routing", "routing_signature")
    assert ids == ["r0", "r1", "r2"] and signatures.shape == (3, 2, 3) and signatures[2].tolist() == [[2] * 3] * 2
    write_shards([], tmp_path / "empty", features=ROUTED_FEATURES)
    assert read_matrices(tmp_path / "empty", "routing_signature")[0] == []
