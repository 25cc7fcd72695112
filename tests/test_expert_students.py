"""Experts scored once on the rows (routing frequency, REAP), and an MoE student that keeps the best of them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, MixtralForCausalLM

from dataengine.errors import UserError
from dataengine.train.expert_prune import keep_experts
from dataengine.train.expert_scores import kept_experts, score_experts
from tests.tiny_models import row_data, save, student_recipe, tiny_mixtral, tiny_tokenizer

SEQUENCES = [[2, 5, 9, 14, 30, 7, 41, 3, 12, 19], [4, 8, 15, 16, 23, 42], [11, 13, 17]]


def _by_hand(moe, sequences) -> tuple[np.ndarray, np.ndarray]:
    """[layers, experts] token-slot shares and REAP scores, each expert's output from transformers' own experts
    module called for that expert alone with weight 1."""
    layers = moe.model.layers
    inputs = [[] for _ in layers]
    hooks = [
        layer.mlp.register_forward_pre_hook(lambda _m, a, i=i: inputs[i].append(a[0][0]))
        for i, layer in enumerate(layers)
    ]
    with torch.no_grad():
        for ids in sequences:
            moe(torch.tensor([ids]))
    for hook in hooks:
        hook.remove()
    slots, reap = np.zeros((len(layers), 4)), np.zeros((len(layers), 4))
    with torch.no_grad():
        for i, layer in enumerate(layers):
            x = torch.cat(inputs[i])
            _, weights, chosen = layer.mlp.gate(x)
            for t in range(len(x)):
                for slot, e in enumerate(chosen[t].tolist()):
                    alone = layer.mlp.experts(x[t : t + 1], torch.tensor([[e]]), torch.ones(1, 1))
                    slots[i, e] += 1
                    reap[i, e] += weights[t, slot].item() * alone.norm().item()
    return slots / slots.sum(axis=1, keepdims=True), np.divide(reap, slots, out=np.zeros_like(reap), where=slots > 0)


def test_frequency_and_reap_are_what_the_experts_do_token_by_token():
    moe = tiny_mixtral(len(tiny_tokenizer()), seed=7)
    scores = score_experts(moe, SEQUENCES)
    frequency, reap = _by_hand(moe, SEQUENCES)
    np.testing.assert_allclose(scores["frequency"], frequency, atol=1e-9)
    np.testing.assert_allclose(scores["reap"], reap, rtol=1e-4)
    assert kept_experts(np.array([[0.1, 0.4, 0.4, 0.2]]), 2) == [[1, 2]]  # a tie goes to the lower index


def test_reap_ranks_last_an_expert_picked_often_that_adds_little():
    moe = tiny_mixtral(len(tiny_tokenizer()), seed=7)
    frequency = score_experts(moe, SEQUENCES)["frequency"]
    busiest = int(frequency[0].argmax())
    with torch.no_grad():
        moe.model.layers[0].mlp.experts.down_proj[busiest] *= 1e-3  # its output all but gone
    scores = score_experts(moe, SEQUENCES)
    assert int(scores["frequency"][0].argmax()) == busiest  # routing does not see it
    assert int(scores["reap"][0].argmin()) == busiest  # REAP does


def _never_route(moe, unused: list[int], sequences) -> None:
    """Set the router rows of `unused` so that every token of `sequences` gives them a logit of -100 (19 tokens,
    32 dimensions: a least-squares row solves it exactly), a layer at a time as each changes the next's input."""
    for layer in moe.model.layers:
        seen = []
        hook = layer.mlp.register_forward_pre_hook(lambda _m, a, seen=seen: seen.append(a[0][0]))
        with torch.no_grad():
            for ids in sequences:
                moe(torch.tensor([ids]))
        hook.remove()
        x = torch.cat(seen)
        row = torch.linalg.lstsq(x, torch.full((len(x), 1), -100.0)).solution[:, 0]
        with torch.no_grad():
            layer.mlp.gate.weight[unused] = row


def test_keeping_the_experts_the_data_uses_keeps_the_function(tmp_path):
    moe = tiny_mixtral(len(tiny_tokenizer()), seed=8)
    _never_route(moe, [0, 2], SEQUENCES)
    kept = kept_experts(score_experts(moe, SEQUENCES)["frequency"], 2)
    assert kept == [[1, 3], [1, 3]]
    student = keep_experts(moe, kept)
    assert isinstance(student, MixtralForCausalLM)
    assert student.config.num_local_experts == 2 and student.config.num_experts_per_tok == 2
    ids = torch.tensor([SEQUENCES[0]])
    with torch.no_grad():
        torch.testing.assert_close(student(ids).logits, moe(ids).logits, rtol=0, atol=1e-5)
    save(student, tiny_tokenizer(), tmp_path / "student")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "student").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, moe(ids).logits, rtol=0, atol=1e-5)
    # one expert kept: top-k follows it down
    assert keep_experts(moe, [[1], [3]]).config.num_experts_per_tok == 1


def test_an_moe_student_from_the_teacher_scored_by_reap(tmp_path):
    from dataengine.train.student import init_student

    tokenizer = tiny_tokenizer()
    teacher = save(tiny_mixtral(len(tokenizer), seed=9), tokenizer, tmp_path / "teacher")
    recipe = student_recipe(teacher, "{from_teacher: {keep_experts: 2, expert_score: reap, sample_rows: 4}}")
    logged = []
    folder = init_student(recipe, tmp_path, tmp_path / "init", row_data(6), None, logged.append)
    made = json.loads((folder / "student_init.json").read_text())
    assert made["experts_kept_of"] == str(teacher) and made["of_experts"] == 4 and made["expert_score"] == "reap"
    assert made["kept_experts"] == kept_experts(np.array(made["scores"]), 2)
    assert made["parameters"] < sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(teacher).parameters())
    assert made["active_parameters"] == made["parameters"]  # top-2 of 2 experts: every one is active
    student = AutoModelForCausalLM.from_pretrained(folder)
    assert isinstance(student, MixtralForCausalLM) and student.config.num_local_experts == 2
    assert any("scoring the teacher's experts (reap) on 4 training rows" in line for line in logged)


def test_a_dense_merge_weighed_by_reap_reads_the_same_scores(tmp_path):
    from dataengine.train.student import init_student

    tokenizer = tiny_tokenizer()
    teacher = save(tiny_mixtral(len(tokenizer), seed=9), tokenizer, tmp_path / "teacher")
    recipe = student_recipe(teacher, "{from_teacher: {merge_experts: routing, expert_score: reap, sample_rows: 4}}")
    folder = init_student(recipe, tmp_path, tmp_path / "init", row_data(6), None, lambda _: None)
    made = json.loads((folder / "student_init.json").read_text())
    moe = AutoModelForCausalLM.from_pretrained(teacher)
    from dataengine.train.student import _token_ids

    reap = score_experts(moe, _token_ids(tokenizer, row_data(6), 4))["reap"]
    np.testing.assert_allclose(made["weights"], (reap / reap.sum(axis=1, keepdims=True)).round(4), atol=1e-4)


def test_a_start_scored_the_same_way_on_the_same_rows_reads_the_scores_already_measured(tmp_path, monkeypatch):
    import dataengine.train.expert_scores as expert_scores
    import dataengine.train.student as student

    tokenizer = tiny_tokenizer()
    teacher = save(tiny_mixtral(len(tokenizer), seed=9), tokenizer, tmp_path / "teacher")
    trained = student_recipe(teacher, "{from_teacher: {keep_experts: 2, expert_score: reap, sample_rows: 4}}")
    first = student.init_student(trained, tmp_path, tmp_path / "init", row_data(6), None, lambda _: None)
    made = json.loads((first / "student_init.json").read_text())

    def scored_again(*args):
        raise AssertionError("the teacher's experts were scored again")

    monkeypatch.setattr(expert_scores, "score_experts", scored_again)
    merge = student_recipe(teacher, "{from_teacher: {merge_experts: routing, expert_score: reap, sample_rows: 4}}")
    logged = []
    folder = student.init_student(merge, tmp_path, tmp_path / "merged", row_data(6), None, logged.append, made)
    merged = json.loads((folder / "student_init.json").read_text())
    reap = np.array(made["scores"])
    np.testing.assert_allclose(merged["weights"], (reap / reap.sum(axis=1, keepdims=True)).round(4), atol=1e-4)
    assert merged["scores"] == made["scores"] and merged["measured"] == made["measured"]
    assert any("scores of the trained student's start (reap: the 4 training rows" in line for line in logged)
    # measured otherwise (other rows, another score), or a start that scored nothing (a named model): scored here
    others = [
        ("{keep_experts: 2, expert_score: reap, sample_rows: 3}", made),
        ("{keep_experts: 2}", made),
        ("{keep_experts: 2, expert_score: reap, sample_rows: 4}", {"model": "a/hub-model"}),
    ]
    for other, given in others:
        recipe = student_recipe(teacher, f"{{from_teacher: {other}}}")
        with pytest.raises(AssertionError, match="scored again"):
            student.init_student(recipe, tmp_path, tmp_path / "other", row_data(6), None, lambda _: None, given)


def test_keep_experts_is_checked(tmp_path):
    from dataengine.recipe import FromTeacherConfig
    from dataengine.train.shape import shape_problems
    from dataengine.train.student import init_student

    with pytest.raises(ValueError, match="merge_experts: uniform merges into a dense student, keep_experts keeps"):
        FromTeacherConfig(keep_experts=2, merge_experts="uniform")
    kept = FromTeacherConfig(keep_experts=2)
    assert FromTeacherConfig.model_validate(kept.model_dump()) == kept  # as a run folder's recipe.json reads back
    tokenizer = tiny_tokenizer()
    teacher = save(tiny_mixtral(len(tokenizer), seed=9), tokenizer, tmp_path / "teacher")
    recipe = student_recipe(teacher, "{from_teacher: {keep_experts: 4}}")
    assert shape_problems(recipe, tmp_path) == [
        f"train.student.from_teacher.keep_experts: 4, the teacher {teacher} has 4 experts per layer: give fewer"
    ]
    with pytest.raises(UserError, match="keep_experts: 4, the teacher has 4 experts per layer: give fewer"):
        init_student(recipe, tmp_path, tmp_path / "init", row_data(6), None, lambda _: None)
    kept = student_recipe(teacher, "{from_teacher: {keep_experts: 2}}")
    other_map = [[1.0] * 8] * 2  # a routing map of a teacher with 8 experts
    with pytest.raises(
        UserError, match="2 layers x 8 experts, the teacher 2 x 4: a routing map made with another model"
    ):
        init_student(kept, tmp_path, tmp_path / "other", row_data(6), other_map, lambda _: None)
    narrowed = student_recipe(teacher, "{from_teacher: {keep_experts: 2}, prune: {intermediate_size: 16}}")
    assert "is a mixture of 2 experts per layer" in shape_problems(narrowed, tmp_path)[0]
