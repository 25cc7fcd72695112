"""Where a student starts: experts merged into a dense model, layers ranked by Block Influence."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from dataengine.errors import UserError
from dataengine.recipe import BuiltinTeacherOptions
from dataengine.teacher.builtin import upcycle
from dataengine.train.influence import block_influence, most_influential
from dataengine.train.merge import merge_experts, merge_weights
from tests.tiny_models import tiny_llama, tiny_mixtral, tiny_tokenizer

IDS = torch.tensor([[2, 5, 9, 14, 30, 7, 41, 3, 12, 19]])


def test_merging_identical_experts_gives_back_the_dense_parent(tmp_path):
    parent = tiny_llama(len(tiny_tokenizer()), seed=1)
    moe = upcycle(parent, BuiltinTeacherOptions(num_experts=4, top_k=2, router="random", expert_noise=0.0))
    load = np.random.default_rng(0).uniform(0, 2, size=(4, 4))  # any weights: the experts are the same
    for method in ("uniform", "routing", "top"):
        dense = merge_experts(moe, merge_weights(method, 4, 4, load.tolist()))
        assert type(dense).__name__ == "MistralForCausalLM"
        with torch.no_grad():
            torch.testing.assert_close(dense(IDS).logits, parent(IDS).logits, rtol=0, atol=1e-5)
    dense.save_pretrained(tmp_path / "student")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "student").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(IDS).logits, parent(IDS).logits, rtol=0, atol=1e-5)


def test_a_routing_weighted_merge_is_the_weighted_average_of_the_experts():
    moe = tiny_mixtral(len(tiny_tokenizer()), seed=2)
    load = [[2.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]  # layer 1: never reached, merged uniformly
    weights = merge_weights("routing", 2, 4, load)
    assert weights.tolist() == [[0.5, 0.25, 0.25, 0.0], [0.25] * 4]
    dense = merge_experts(moe, weights)
    theirs, ours = moe.state_dict(), dense.state_dict()
    for layer, w in enumerate(weights):
        gate_up = theirs[f"model.layers.{layer}.mlp.experts.gate_up_proj"]
        down = theirs[f"model.layers.{layer}.mlp.experts.down_proj"]
        by_hand = sum(float(w[e]) * gate_up[e] for e in range(4))
        torch.testing.assert_close(ours[f"model.layers.{layer}.mlp.gate_proj.weight"], by_hand[:64])
        torch.testing.assert_close(ours[f"model.layers.{layer}.mlp.up_proj.weight"], by_hand[64:])
        torch.testing.assert_close(
            ours[f"model.layers.{layer}.mlp.down_proj.weight"], sum(float(w[e]) * down[e] for e in range(4))
        )
        torch.testing.assert_close(
            ours[f"model.layers.{layer}.self_attn.q_proj.weight"],
            theirs[f"model.layers.{layer}.self_attn.q_proj.weight"],
        )
    assert merge_weights("top", 2, 4, [[0, 3, 1, 0], [1, 0, 0, 2]]).tolist() == [[0, 1, 0, 0], [0, 0, 0, 1]]


def test_merging_needs_scores_for_routing_and_a_known_architecture():
    with pytest.raises(ValueError, match="routing weighs the experts by their scores: none given"):
        merge_weights("routing", 2, 4)
    with pytest.raises(UserError, match="a routing map made with another model"):
        merge_weights("top", 2, 4, [[1.0] * 8] * 2)
    with pytest.raises(UserError, match="merging experts supports mixtral, qwen3_moe teachers; this one is llama"):
        merge_experts(tiny_llama(50), np.ones((4, 1)))


def test_block_influence_is_one_minus_the_cosine_of_each_layers_input_and_output():
    model = tiny_llama(len(tiny_tokenizer()), seed=3, layers=4)
    sequences = [IDS[0].tolist(), IDS[0, :6].tolist()]
    scores = block_influence(model, sequences)
    # by hand from transformers' hidden states: entry i is layer i's input, i + 1 its output (the last entry
    # is after the final norm, so the last layer is checked through its own forward)
    cos_sums, tokens = np.zeros(4), 0
    with torch.no_grad():
        for ids in sequences:
            out = model(torch.tensor([ids]), output_hidden_states=True)
            hidden = out.hidden_states
            for i in range(3):
                cos_sums[i] += torch.nn.functional.cosine_similarity(hidden[i], hidden[i + 1], dim=-1).sum().item()
            tokens += len(ids)
    assert scores[:3] == pytest.approx((1 - cos_sums[:3] / tokens).tolist(), abs=1e-5)
    assert all(0 <= s <= 2 for s in scores)
    assert most_influential([0.3, 0.1, 0.5, 0.1], 2) == [0, 2]
    assert most_influential([0.3, 0.1, 0.5, 0.1], 3) == [0, 1, 2]  # a tie goes to the earlier layer


def test_a_student_merged_from_the_teacher_and_pruned_by_influence(tmp_path):
    from dataengine.train.student import init_student
    from tests.tiny_models import row_data, save, student_recipe

    tokenizer = tiny_tokenizer()
    teacher = save(tiny_mixtral(len(tokenizer), seed=4), tokenizer, tmp_path / "teacher")
    recipe = student_recipe(
        teacher,
        "{from_teacher: {merge_experts: routing}, prune: {method: block_influence, keep: 1, sample_rows: 3}}",
        route=True,
    )
    load = [[2.0, 2.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]
    folder = init_student(recipe, tmp_path, tmp_path / "init", row_data(6), load, lambda _: None)
    made = json.loads((folder / "student_init.json").read_text())
    assert made["merged_experts_of"] == str(teacher) and made["weights"] == [[0.5, 0.5, 0, 0], [0.25] * 4]
    scores = made["block_influence"]
    assert len(scores) == 2 and made["layers"] == [int(np.argmax(scores))] and made["of_layers"] == 2
    student = AutoModelForCausalLM.from_pretrained(folder)
    assert type(student).__name__ == "MistralForCausalLM" and student.config.num_hidden_layers == 1


def test_with_perturbed_experts_a_merged_student_stays_far_closer_than_a_pruned_one():
    from dataengine.train.student import prune_layers

    parent = tiny_llama(len(tiny_tokenizer()), seed=5, layers=4)
    options = BuiltinTeacherOptions(num_experts=4, top_k=2, router="random", expert_noise=0.3, seed=1)
    moe = upcycle(parent, options)  # each expert its own noisy copy of the parent's MLP

    def kl_to_teacher(student) -> float:
        with torch.no_grad():
            theirs = torch.log_softmax(moe(IDS).logits, dim=-1)
            ours = torch.log_softmax(student(IDS).logits, dim=-1)
        return float((theirs.exp() * (theirs - ours)).sum(-1).mean())

    merged = kl_to_teacher(merge_experts(moe, merge_weights("uniform", 4, 4)))
    pruned = kl_to_teacher(prune_layers(tiny_llama(len(tiny_tokenizer()), seed=5, layers=4), [0, 2]))
    assert merged < 0.2 * pruned


@pytest.mark.parametrize("native", [True, False])
def test_a_bf16_teacher_is_merged_layer_by_layer_in_fp32(tmp_path, monkeypatch, native):
    from transformers import MixtralForCausalLM

    from dataengine import hardware
    from dataengine.train.student import init_student
    from tests.tiny_models import save, student_recipe

    tokenizer = tiny_tokenizer()
    moe = tiny_mixtral(len(tokenizer), seed=6).to(torch.bfloat16)
    teacher = save(moe, tokenizer, tmp_path / "teacher")
    recipe = student_recipe(teacher, "{from_teacher: {merge_experts: uniform}}")
    # the teacher stays in its checkpoint's bf16 in memory where the CPU computes bf16 natively (half of fp32 for
    # a 30B MoE); float32 on a CPU without, where bf16 forwards are slow
    loaded = []
    original = AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(hardware, "native_bf16", lambda: native)
    monkeypatch.setattr(
        AutoModelForCausalLM,
        "from_pretrained",
        lambda *a, **k: loaded.append(model := original(*a, **k)) or model,
    )
    folder = init_student(recipe, tmp_path, tmp_path / "init", [], log=lambda _: None)
    monkeypatch.undo()
    assert [type(m) for m in loaded] == [MixtralForCausalLM]
    assert loaded[0].dtype == (torch.bfloat16 if native else torch.float32)
    student = AutoModelForCausalLM.from_pretrained(folder)
    assert student.dtype == torch.float32
    down = moe.state_dict()["model.layers.1.mlp.experts.down_proj"].float()  # [experts, out, in] in bf16
    torch.testing.assert_close(student.model.layers[1].mlp.down_proj.weight, down.mean(dim=0), rtol=0, atol=1e-7)
