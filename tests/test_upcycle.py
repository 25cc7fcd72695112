"""Sparse upcycling on a tiny random Llama: a real Mixtral MoE that computes the dense function."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MixtralForCausalLM

from dataengine.recipe import BuiltinTeacherOptions
from dataengine.teacher.builtin import build_key, upcycle


def tiny_dense() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


# two kinds of "text": sequences over low token ids and over high ones
CALIBRATION = [torch.randint(0, 40, (24,), generator=torch.Generator().manual_seed(i)) for i in range(6)] + [
    torch.randint(88, 128, (24,), generator=torch.Generator().manual_seed(100 + i)) for i in range(6)
]


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_identical_experts_match_dense_logits():
    dense = tiny_dense()
    moe = upcycle(dense, BuiltinTeacherOptions(num_experts=4, top_k=2), CALIBRATION)
    assert isinstance(moe, MixtralForCausalLM)
    assert moe.config.num_local_experts == 4 and moe.config.num_experts_per_tok == 2
    ids = torch.randint(0, 128, (2, 16))
    diff = (logits(dense, ids) - logits(moe, ids)).abs().max().item()
    assert diff < 1e-4


def test_router_routes_to_several_experts():
    dense = tiny_dense()
    moe = upcycle(dense, BuiltinTeacherOptions(num_experts=4, top_k=1, router="random"))
    with torch.no_grad():
        out = moe(torch.randint(0, 128, (4, 32)), output_router_logits=True)
    chosen = torch.cat([r.argmax(-1).flatten() for r in out.router_logits])
    assert len(chosen.unique()) > 1  # a real router, not a constant


def test_expert_noise_makes_experts_differ_and_changes_the_function():
    dense = tiny_dense()
    moe = upcycle(dense, BuiltinTeacherOptions(num_experts=4, top_k=2, expert_noise=0.1, seed=1), CALIBRATION)
    experts = moe.model.layers[0].mlp.experts.gate_up_proj
    assert not torch.equal(experts[0], experts[1])
    ids = torch.randint(0, 128, (1, 16))
    assert (logits(dense, ids) - logits(moe, ids)).abs().max().item() > 1e-3


def test_tied_embeddings_and_attention_copied():
    dense = tiny_dense()
    moe = upcycle(dense, BuiltinTeacherOptions(), CALIBRATION)
    assert torch.equal(moe.model.embed_tokens.weight, dense.model.embed_tokens.weight)
    assert moe.lm_head.weight.data_ptr() == moe.model.embed_tokens.weight.data_ptr()
    assert torch.equal(moe.model.layers[1].self_attn.q_proj.weight, dense.model.layers[1].self_attn.q_proj.weight)


def test_build_key_depends_on_options():
    a = build_key("smollm2-moe", BuiltinTeacherOptions())
    assert a == build_key("smollm2-moe", BuiltinTeacherOptions())
    assert a != build_key("smollm2-moe", BuiltinTeacherOptions(num_experts=8))
    assert a != build_key("smollm2-moe", BuiltinTeacherOptions(router="random"))


def _top1_load(moe, sequences) -> torch.Tensor:
    """[layers, experts] share of the sequences' tokens whose top-1 expert is each expert."""
    with torch.no_grad():
        out = moe(torch.stack(sequences), output_router_logits=True)
    counts = torch.stack([torch.bincount(r.argmax(-1), minlength=4).float() for r in out.router_logits])
    return counts / counts.sum(dim=1, keepdim=True)


def _sequences(low: int, high: int, seed: int, n: int) -> list[torch.Tensor]:
    return [torch.randint(low, high, (24,), generator=torch.Generator().manual_seed(seed + i)) for i in range(n)]


def test_a_kmeans_router_separates_what_the_random_one_mixes():
    from dataengine.experts.metrics import js_divergence

    dense = tiny_dense()
    # hidden states as in trained models: a direction every token shares, a smaller one per kind of text
    shared, first, second = torch.randn(3, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        embeddings = dense.model.embed_tokens.weight
        embeddings += 0.1 * shared
        embeddings[:40] += 0.05 * first
        embeddings[88:] += 0.05 * second
    calibration = _sequences(0, 40, 0, 6) + _sequences(88, 128, 100, 6)
    low, high = _sequences(0, 40, 50, 4), _sequences(88, 128, 150, 4)  # held out from the calibration

    def divergence(moe) -> list[float]:
        return js_divergence(_top1_load(moe, low).numpy(), _top1_load(moe, high).numpy())

    fitted = upcycle(dense, BuiltinTeacherOptions(num_experts=4, top_k=2), calibration)
    random = upcycle(dense, BuiltinTeacherOptions(num_experts=4, top_k=2, router="random"))
    assert min(divergence(fitted)) > 0.8 and max(divergence(random)) < 0.6
    ids = torch.randint(0, 128, (2, 16))
    assert (logits(dense, ids) - logits(fitted, ids)).abs().max().item() < 1e-4  # still the dense function


def test_the_kmeans_router_needs_its_calibration():
    with pytest.raises(ValueError, match="calibration"):
        upcycle(tiny_dense(), BuiltinTeacherOptions())
