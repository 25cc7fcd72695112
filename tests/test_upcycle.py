"""Sparse upcycling on a tiny random Llama: a real Mixtral MoE that computes the dense function."""

from __future__ import annotations

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


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_identical_experts_match_dense_logits():
    dense = tiny_dense()
    moe = upcycle(dense, BuiltinTeacherOptions(num_experts=4, top_k=2))
    assert isinstance(moe, MixtralForCausalLM)
    assert moe.config.num_local_experts == 4 and moe.config.num_experts_per_tok == 2
    ids = torch.randint(0, 128, (2, 16))
    diff = (logits(dense, ids) - logits(moe, ids)).abs().max().item()
    assert diff < 1e-4


def test_router_routes_to_several_experts():
    dense = tiny_dense()
    moe = upcycle(dense, BuiltinTeacherOptions(num_experts=4, top_k=1))
    with torch.no_grad():
        out = moe(torch.randint(0, 128, (4, 32)), output_router_logits=True)
    chosen = torch.cat([r.argmax(-1).flatten() for r in out.router_logits])
    assert len(chosen.unique()) > 1  # a real router, not a constant


def test_expert_noise_makes_experts_differ_and_changes_the_function():
    dense = tiny_dense()
    moe = upcycle(dense, BuiltinTeacherOptions(num_experts=4, top_k=2, expert_noise=0.1, seed=1))
    experts = moe.model.layers[0].mlp.experts.gate_up_proj
    assert not torch.equal(experts[0], experts[1])
    ids = torch.randint(0, 128, (1, 16))
    assert (logits(dense, ids) - logits(moe, ids)).abs().max().item() > 1e-3


def test_tied_embeddings_and_attention_copied():
    dense = tiny_dense()
    moe = upcycle(dense, BuiltinTeacherOptions())
    assert torch.equal(moe.model.embed_tokens.weight, dense.model.embed_tokens.weight)
    assert moe.lm_head.weight.data_ptr() == moe.model.embed_tokens.weight.data_ptr()
    assert torch.equal(moe.model.layers[1].self_attn.q_proj.weight, dense.model.layers[1].self_attn.q_proj.weight)


def test_build_key_depends_on_options():
    a = build_key("smollm2-moe", BuiltinTeacherOptions())
    assert a == build_key("smollm2-moe", BuiltinTeacherOptions())
    assert a != build_key("smollm2-moe", BuiltinTeacherOptions(num_experts=8))
