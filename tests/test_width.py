"""Width pruning: MLP channels ranked by activation magnitude (Minitron), the least active cut."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM

from dataengine.train.width import channel_importance, keep_channels
from tests.tiny_models import tiny_llama, tiny_tokenizer

SEQUENCES = [[2, 5, 9, 14, 30, 7, 41, 3, 12, 19], [2, 8, 11, 4]]


def test_channel_importance_is_the_mean_magnitude_of_the_down_projections_input():
    model = tiny_llama(len(tiny_tokenizer()), seed=3, layers=3)
    scores = channel_importance(model, SEQUENCES)
    # by hand: each layer's MLP activation act(gate(x)) * up(x), from the layer's post-attention normed input
    inputs = {}
    handles = [
        layer.post_attention_layernorm.register_forward_hook(
            lambda module, args, out, i=i: inputs.setdefault(i, []).append(out.detach())
        )
        for i, layer in enumerate(model.model.layers)
    ]
    with torch.no_grad():
        for ids in SEQUENCES:
            model(torch.tensor([ids]))
    for handle in handles:
        handle.remove()
    for i, layer in enumerate(model.model.layers):
        x = torch.cat([t[0] for t in inputs[i]])  # [tokens, hidden]
        activation = layer.mlp.act_fn(layer.mlp.gate_proj(x)) * layer.mlp.up_proj(x)
        by_hand = activation.abs().mean(dim=0).double()
        torch.testing.assert_close(scores[i], by_hand, rtol=1e-5, atol=1e-7)


def test_the_least_important_channels_are_cut_and_keeping_all_changes_nothing(tmp_path):
    model = tiny_llama(len(tiny_tokenizer()), seed=4, layers=2)
    ids = torch.tensor([SEQUENCES[0]])
    with torch.no_grad():
        before = model(ids).logits
    scores = channel_importance(model, SEQUENCES)
    kept_all = keep_channels(model, scores, 64)
    assert kept_all == [list(range(64))] * 2
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, before, rtol=0, atol=0)

    scores = [torch.arange(64, dtype=torch.float64).flip(0), torch.ones(64, dtype=torch.float64)]
    gate = model.model.layers[0].mlp.gate_proj.weight.detach().clone()
    down = model.model.layers[0].mlp.down_proj.weight.detach().clone()
    kept = keep_channels(model, scores, 16)
    assert kept[0] == list(range(16))  # layer 0: the 16 highest scores are channels 0..15
    assert kept[1] == list(range(16))  # layer 1: all equal, ties to the lower index
    mlp = model.model.layers[0].mlp
    torch.testing.assert_close(mlp.gate_proj.weight, gate[:16])
    torch.testing.assert_close(mlp.down_proj.weight, down[:, :16])
    assert model.config.intermediate_size == 16
    model.save_pretrained(tmp_path / "narrow")
    assert json.loads((tmp_path / "narrow" / "config.json").read_text())["intermediate_size"] == 16
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "narrow").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits, rtol=0, atol=1e-6)


def test_keeping_the_most_active_channels_stays_closer_than_keeping_the_least_active():
    def kl_after(keep_least: bool) -> float:
        model = tiny_llama(len(tiny_tokenizer()), seed=6, layers=3)
        ids = torch.tensor([SEQUENCES[0]])
        with torch.no_grad():
            theirs = torch.log_softmax(model(ids).logits, dim=-1)
        scores = channel_importance(model, SEQUENCES)
        keep_channels(model, [-s if keep_least else s for s in scores], 32)
        with torch.no_grad():
            ours = torch.log_softmax(model(ids).logits, dim=-1)
        return float((theirs.exp() * (theirs - ours)).sum(-1).mean())

    assert kl_after(keep_least=False) < 0.5 * kl_after(keep_least=True)


def test_a_student_pruned_in_depth_then_width(tmp_path):
    import pytest

    from dataengine.errors import UserError
    from dataengine.train.student import init_student
    from tests.tiny_models import row_data, save, student_recipe

    tokenizer = tiny_tokenizer()
    start = save(tiny_llama(len(tokenizer), seed=7, layers=3), tokenizer, tmp_path / "start")

    def recipe(prune: str):
        return student_recipe(start, f"{{model: {start}, prune: {prune}}}")

    both = recipe("{method: block_influence, keep: 2, intermediate_size: 24, sample_rows: 3}")
    folder = init_student(both, tmp_path, tmp_path / "both", row_data(6), log=lambda _: None)
    made = json.loads((folder / "student_init.json").read_text())
    assert made["intermediate_size"] == 24 and made["of_intermediate_size"] == 64 and len(made["layers"]) == 2
    student = AutoModelForCausalLM.from_pretrained(folder)
    assert student.config.num_hidden_layers == 2 and student.config.intermediate_size == 24
    assert student.model.layers[1].mlp.down_proj.weight.shape == (32, 24)

    with pytest.raises(UserError, match="intermediate_size: 64, the start's MLPs have 64 channels"):
        init_student(recipe("{intermediate_size: 64}"), tmp_path, tmp_path / "wide", row_data(6), log=lambda _: None)
    with pytest.raises(UserError, match="intermediate_size ranks the MLP channels on training rows: none given"):
        init_student(recipe("{intermediate_size: 8}"), tmp_path, tmp_path / "none", row_data(0), log=lambda _: None)
