"""Preference pairs from the judge's verdicts: which pairs are made, the published `preference` config, and
TRL's DPOTrainer on them."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pytest
import torch
from datasets import load_dataset
from huggingface_hub import DatasetCard, DatasetCardData
from rich.console import Console
from transformers import AutoModelForCausalLM

from dataengine.errors import RecipeError, UserError
from dataengine.judge.pairs import preference_pairs
from dataengine.manifest import Manifest
from dataengine.pipeline import build_pipeline as build
from dataengine.publish.layout import card_configs, marked, write_layout
from dataengine.publish.stage import publish_run
from dataengine.recipe import DPOSettings, parse_recipe
from dataengine.rows import CURATED_FEATURES, PREFERENCE_FEATURES, write_shards
from dataengine.stage import RunContext
from dataengine.teacher.server import TeacherEndpoint
from dataengine.train.data import phase_rows
from dataengine.train.phases import run_dpo
from tests.conftest import StandinJudge, standin_score
from tests.tiny_models import rows, save, tiny_llama, tiny_tokenizer


def _judged(prompt: str, row_id: str, score: float | None, kind: str = "chat", passed: bool | None = None) -> dict:
    return {
        "id": row_id,
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": f"answer {row_id}"}],
        "kind": kind,
        "language": "en",
        "judge_score": score,
        "judge_model": "judge",
        "tests_passed": passed,
    }


def test_a_pair_is_the_best_kept_answer_against_the_worst_where_the_margin_holds(tmp_path, monkeypatch):
    from dataengine.rows import sort

    monkeypatch.setattr(sort, "SPILL_ROWS", 3)  # a prompt's rollouts meet across spilled runs
    rows_ = [
        *(_judged("A", f"a{i}", s) for i, s in enumerate((5, 3, 2))),  # best against worst: 5 vs 2
        _judged("B", "b0", 4),
        _judged("B", "b1", 3.5),  # margin 0.5 < 1: no pair
        _judged("C", "c0", 2.5),
        _judged("C", "c1", 1),  # the best is under the threshold: not a chosen answer
        _judged("D", "d0", 5),  # one rollout: nothing to compare
        _judged("E", "e0", 4),
        _judged("E", "e1", None),  # judge_error: takes no part
        _judged("F", "f0", 3, "code", passed=True),
        _judged("F", "f1", 4.5, "code", passed=False),  # tests passed beat the score
        _judged("G", "g0", 4, "code", passed=True),
        _judged("G", "g1", 3.5, "code", passed=True),  # both passed: the margin decides, and fails
    ]
    pairs = list(preference_pairs(rows_, threshold=3, min_margin=1, spill=tmp_path))
    assert [(p["chosen_id"], p["rejected_id"]) for p in pairs] == [("a0", "a2"), ("f0", "f1")]
    first = next(p for p in pairs if p["chosen_id"] == "a0")
    assert first["prompt"] == [{"role": "user", "content": "A"}]
    assert first["chosen"] == [{"role": "assistant", "content": "answer a0"}]
    assert first["rejected"] == [{"role": "assistant", "content": "answer a2"}]
    assert (first["chosen_score"], first["rejected_score"]) == (5, 2)
    assert len(list(preference_pairs(rows_, threshold=3, min_margin=0.5, spill=tmp_path))) == 4  # B and G hold now
    assert not list(tmp_path.iterdir())  # the spilled runs are removed
    # scores as the judge computed them: 3.6 in float32 is under a threshold of 3.6
    close = [_judged("H", "h0", 3.6), _judged("H", "h1", 2.4)]
    assert [p["chosen_id"] for p in preference_pairs(close, threshold=3.6, min_margin=1, spill=tmp_path)] == ["h0"]


RECIPE = """
name: pairs
pipeline: distill
teacher: {{model: teacher, endpoint: "http://127.0.0.1:1"}}
generate: {{chat: {{languages: [{{code: en, quota: 1}}], rollouts: {rollouts}}}}}
curate: {{judge: {{pairs: {{min_margin: 1}}}}}}
train: {{student: {{name: s, model: some/student}}{dpo}}}
{extra}"""


def test_pairs_and_dpo_are_checked_and_wired(tmp_path):
    with pytest.raises(RecipeError, match="compares rollouts of one prompt: set generate.chat.rollouts"):
        parse_recipe(RECIPE.format(rollouts=1, dpo="", extra=""))
    with pytest.raises(RecipeError, match="appending preference pairs is not supported yet"):
        parse_recipe(RECIPE.format(rollouts=2, dpo="", extra="publish: {to: out, append: true}"))
    no_pairs = RECIPE.format(rollouts=2, dpo=", dpo: {beta: 0.2}", extra="").replace("{pairs: {min_margin: 1}}", "{}")
    with pytest.raises(RecipeError, match="train.dpo trains on preference pairs: add curate.judge.pairs"):
        parse_recipe(no_pairs)
    recipe = parse_recipe(
        RECIPE.format(rollouts=2, dpo=", dpo: {beta: 0.2}", extra="publish: {to: out}"), base_dir=tmp_path
    )
    stages = {stage.name: stage for stage in build(recipe, tmp_path).stages}
    assert stages["judge"].outputs["preference"] == "preference"
    assert stages["train"].inputs["preference"] == "preference"
    assert stages["publish"].inputs["preference"] == "preference"


def _pairs(spill) -> list[dict]:
    """Two answers per tiny prompt: the right one chosen, a wrong one rejected."""
    judged = []
    for row in rows():
        judged.append({**row, "judge_score": 5.0, "judge_model": "j"})
        wrong = {"role": "assistant", "content": "i do not know"}
        judged.append({**row, "id": row["id"] + "-wrong", "messages": [row["messages"][0], wrong], "judge_score": 1.0})
    return list(preference_pairs(judged, threshold=3, min_margin=1, spill=spill))


def test_the_preference_config_loads_with_datasets_and_trains_two_dpo_steps(tmp_path):
    pairs = _pairs(tmp_path / "spill")
    assert len(pairs) == len(rows())
    layout = tmp_path / "published"
    counts = {
        "preference": write_layout(
            [marked(pa.Table.from_pylist(pairs, schema=PREFERENCE_FEATURES.arrow_schema), pa.array([pairs[0]["id"]]))],
            PREFERENCE_FEATURES,
            layout,
            [],
            100,
            default="preference",
        )["preference"]
    }
    front = DatasetCardData(configs=card_configs(counts)).to_yaml()
    DatasetCard(f"---\n{front}\n---\n").save(str(layout / "README.md"))
    loaded = load_dataset(str(layout), "preference")
    assert loaded["train"].num_rows == len(pairs) - 1 and loaded["test"].num_rows == 1
    assert loaded["train"][0]["chosen"][0]["role"] == "assistant"

    tokenizer = tiny_tokenizer()
    start = save(tiny_llama(len(tokenizer), seed=2), tokenizer, tmp_path / "start")
    settings = DPOSettings(
        max_steps=2, per_device_train_batch_size=4, learning_rate=1e-2, logging_steps=1, precision="fp32", beta=0.5
    )
    final = run_dpo(start, phase_rows("dpo", loaded["train"]), settings, tmp_path / "dpo", print)
    record = json.loads((final / "phase.json").read_text())
    assert record["method"] == "dpo" and record["steps"] == 2 and record["rows"] == len(pairs) - 1
    logged = [entry for entry in record["log_history"] if "loss" in entry]
    assert len(logged) == 2 and "rewards/margins" in logged[-1]
    before, after = (AutoModelForCausalLM.from_pretrained(p) for p in (start, final))
    moved = any(not torch.equal(a, b) for a, b in zip(before.parameters(), after.parameters(), strict=True))
    assert moved


DPO_RECIPE = """
name: dpo
pipeline: distill
teacher: {{model: teacher, endpoint: "http://127.0.0.1:{port}"}}
generate: {{chat: {{languages: [{{code: en, quota: 1}}], rollouts: 2}}}}
curate: {{judge: {{pairs: {{min_margin: 1}}, max_concurrent_requests: 2}}}}
train:
  student: {{name: s, model: "{start}"}}
  sft: {{max_steps: 2, per_device_train_batch_size: 4, precision: fp32, save_steps: 2, max_length: 64}}
  dpo: {{max_steps: 2, per_device_train_batch_size: 4, learning_rate: 0.01, precision: fp32, beta: 0.5, save_steps: 2}}
  evaluate: {{eval_fraction: 0.25, teacher: false, max_new_tokens: 8}}
"""


def test_dpo_follows_sft_and_the_judge_weighs_the_student_against_itself_before(tmp_path, judge_port):
    tokenizer = tiny_tokenizer()
    start = save(tiny_llama(len(tokenizer), seed=2), tokenizer, tmp_path / "start")
    recipe = parse_recipe(DPO_RECIPE.format(port=judge_port, start=start), base_dir=tmp_path)
    stages = {stage.name: stage for stage in build(recipe, tmp_path).stages}
    run_dir = tmp_path / "run"
    # two rollouts of every prompt: the held-out split (by row id) may take one and leave the other
    siblings = [
        {**r, "id": r["id"] + "-b", "messages": [r["messages"][0], {"role": "assistant", "content": "b"}]}
        for r in rows()
    ]
    judged = rows() + siblings
    write_shards(judged, run_dir / "judged", features=CURATED_FEATURES)
    write_shards(_pairs(tmp_path / "spill"), run_dir / "preference", features=PREFERENCE_FEATURES)
    teacher = TeacherEndpoint(recipe.teacher, run_dir / "teacher.log", log=lambda _: None)
    ctx = RunContext(recipe, tmp_path, run_dir, Console(file=io.StringIO()), "run-1", teacher)

    def run(stage):
        inputs = {role: run_dir / folder for role, folder in stage.inputs.items()}
        outputs = {role: run_dir / folder for role, folder in stage.outputs.items()}
        for folder in outputs.values():
            folder.mkdir(parents=True, exist_ok=True)
        return stage.run(inputs, outputs, run_dir / ".work" / stage.name, ctx), outputs

    trained, outputs = run(stages["train"])
    phases = [phase["method"] for phase in trained.stats["phases"]]
    assert phases == ["sft", "dpo"]
    held_out = set(json.loads((outputs["student"] / "training.json").read_text())["held_out_ids"])
    dpo = json.loads((run_dir / ".work" / "train" / "dpo" / "final" / "phase.json").read_text())
    # no pair on a prompt the evaluation asks, whichever rollout of it was held out
    asked_prompts = {r["messages"][0]["content"] for r in judged if r["id"] in held_out}
    assert any(i.endswith("-b") for i in held_out)  # a sibling held out: its chosen row alone would not say
    pairs = _pairs(tmp_path / "spill")
    assert dpo["rows"] == sum(p["prompt"][0]["content"] not in asked_prompts for p in pairs) < len(pairs)
    # the student before DPO is the SFT phase's, kept for the evaluation
    sft = run_dir / ".work" / "train" / "sft" / "final" / "model.safetensors"
    assert (outputs["before_dpo"] / "model.safetensors").read_bytes() == sft.read_bytes()

    evaluated, outputs = run(stages["evaluate"])
    win = evaluated.stats["win_rate"]
    assert win["wins"] + win["ties"] + win["losses"] == len(held_out) and win["unjudged"] == 0
    # recomputed from what the stand-in judge was sent: the trained student's answer against the one before
    asked = {body["user"].split("/verdict")[0]: body["messages"][0]["content"] for body in StandinJudge.requests}
    assert len(asked) == 2 * len(held_out)
    samples = [json.loads(line) for line in (outputs["metrics"] / "samples.jsonl").read_text().splitlines()]
    after = {s["id"]: s["answer"] for s in samples if s["student"] == "after"}
    for row_id in held_out:
        assert asked[f"{row_id}/after"].endswith(f"Answer:\n{after[row_id]}")
    scores = [(standin_score(asked[f"{i}/after"]), standin_score(asked[f"{i}/before"])) for i in held_out]
    assert win["wins"] == sum(a > b for a, b in scores) and win["losses"] == sum(a < b for a, b in scores)
    assert win["rate"] == pytest.approx((win["wins"] + win["ties"] / 2) / len(held_out))
    assert "win_rate" in json.loads((outputs["metrics"] / "metrics.json").read_text())


def test_published_pairs_keep_test_prompts_out_of_train_and_are_never_appended(tmp_path):
    recipe = parse_recipe(RECIPE.format(rollouts=2, dpo="", extra="").replace("pipeline: distill", "pipeline: curate"))
    recipe = recipe.model_copy(update={"train": None})
    run_dir = tmp_path / "run"
    stages = {
        "generate": {"rows": "generated"},
        "curate": {"kept": "curated", "rejected": "rejected"},
        "judge": {"kept": "judged", "rejected": "judge_rejected", "preference": "preference"},
    }
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"run_id": "r", "recipe": "pairs", "stages": stages}))
    (run_dir / "recipe.json").write_text(recipe.model_dump_json())
    judged = [{**r, "topic": "t", "task": "t", "judge_score": 5.0} for r in rows()]
    verdicts = {
        "judge_model": "j",
        "threshold": 3.0,
        "score_histogram": {"kept": {"5.0": len(judged)}, "rejected": {}},
        "mean_score_kept": 5.0,
        "mean_score_rejected": None,
        "mean_by_criterion": {},
        "unjudged": 0,
    }
    for folder, stage in (("generated", "generate"), ("curated", "curate"), ("judged", "judge")):
        write_shards(judged, run_dir / folder, features=CURATED_FEATURES)
        stats = verdicts if stage == "judge" else {}
        Manifest(stage, "c", "", "o", len(judged), len(judged), {}, stats, {}, "r", "h", {}).write(run_dir / folder)
    write_shards(_pairs(tmp_path / "spill"), run_dir / "preference", features=PREFERENCE_FEATURES)

    with pytest.raises(UserError, match="appending them to a published dataset is not supported yet"):
        publish_run(run_dir, str(tmp_path / "out"), append=True, dry_run=False, console=Console(file=io.StringIO()))
    publish_run(run_dir, str(tmp_path / "out"), append=False, dry_run=False, console=Console(file=io.StringIO()))
    rows_ = load_dataset(str(tmp_path / "out"))
    pairs = load_dataset(str(tmp_path / "out"), "preference")
    tested = {r["messages"][0]["content"] for r in rows_["test"]}
    assert tested and {p["prompt"][0]["content"] for p in pairs["test"]} == tested
    assert not {p["prompt"][0]["content"] for p in pairs["train"]} & tested
    assert pairs["train"].num_rows + pairs["test"].num_rows == len(_pairs(tmp_path / "spill"))
