"""Sparse upcycling on a tiny random Llama: a real Mixtral MoE that computes the dense function."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MixtralForCausalLM

from dataengine.errors import UserError
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


def _split(shared: float = 0.5, seed: int = 0):
    dense = tiny_dense()
    options = BuiltinTeacherOptions(num_experts=4, top_k=2, experts="split", shared_channels=shared, seed=seed)
    return dense, upcycle(dense, options, CALIBRATION)


def test_split_experts_share_the_most_active_channels_and_split_the_rest():
    dense, moe = _split(shared=0.5)
    # 64 channels: 32 shared by every expert, 8 of the other 32 each
    assert moe.config.intermediate_size == 40
    gate_up = moe.model.layers[0].mlp.experts.gate_up_proj  # [experts, 2 * 40, hidden]
    dense_rows = dense.model.layers[0].mlp.gate_proj.weight
    for e in range(4):
        assert torch.equal(gate_up[e, :32], gate_up[0, :32])  # the shared channels, in every expert
    own = [{tuple(r.tolist()) for r in gate_up[e, 32:40]} for e in range(4)]
    assert all(not (own[a] & own[b]) for a in range(4) for b in range(a + 1, 4))  # the rest split, disjoint
    every = set().union(*own) | {tuple(r.tolist()) for r in gate_up[0, :32]}
    assert every == {tuple(r.tolist()) for r in dense_rows}  # and together every channel of the dense MLP


def test_split_experts_with_every_expert_chosen_equally_are_the_dense_mlp():
    # every expert chosen (top-k = experts) with equal weight 1/4: each adds the shared channels / 4 and its own
    # group x 4 / 4, so the sum is every channel once: gate, up, down and the top-k scale all in their places
    dense = tiny_dense()
    options = BuiltinTeacherOptions(num_experts=4, top_k=4, experts="split", shared_channels=0.5)
    moe = upcycle(dense, options, CALIBRATION)
    for layer in moe.model.layers:
        with torch.no_grad():
            layer.mlp.gate.weight.zero_()
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(4))
    assert (logits(moe, ids) - logits(dense, ids)).abs().max().item() < 1e-4


def test_a_shared_share_whose_rest_does_not_divide_rounds_to_equal_groups():
    dense = tiny_dense()
    # 64 channels: int(0.74 * 64) = 47 shared leaves 17, rounded down to 16 (4 a group), so 48 shared
    moe = upcycle(dense, BuiltinTeacherOptions(experts="split", shared_channels=0.74), CALIBRATION)
    assert moe.config.intermediate_size == 48 + 4
    with pytest.raises(UserError, match="leaves fewer than one per expert"):
        upcycle(dense, BuiltinTeacherOptions(experts="split", shared_channels=0.99), CALIBRATION)


def test_split_experts_depend_on_routing():
    from bench.teacher_experts import Forced

    dense, moe = _split()
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(3))
    as_built = logits(moe, ids)
    assert (as_built - logits(dense, ids)).abs().max().item() > 1e-3  # no longer the dense function
    forced = Forced(moe, "reversed")
    try:
        other = logits(moe, ids)
    finally:
        forced.close()
    assert (other - as_built).abs().max().item() > 1e-2  # other experts compute something else


def test_split_knobs_are_refused_with_copies_and_the_reverse():
    with pytest.raises(ValueError, match="shared_channels: only for experts: split"):
        BuiltinTeacherOptions(shared_channels=0.5)
    with pytest.raises(ValueError, match="router: only for experts: copies"):
        BuiltinTeacherOptions(experts="split", router="random")
    with pytest.raises(ValueError, match="expert_noise: only for experts: copies"):
        BuiltinTeacherOptions(experts="split", expert_noise=0.1)
    # a run folder's recipe.json holds every key: read back, it is the same options
    for options in (BuiltinTeacherOptions(experts="split", shared_channels=0.5), BuiltinTeacherOptions()):
        assert BuiltinTeacherOptions.model_validate(options.model_dump()) == options


def test_split_has_its_own_build_key_and_copies_keep_theirs():
    copies = BuiltinTeacherOptions()
    # the key a copies teacher had before `experts` existed, so cached builds are found (it moves with
    # BUILD_VERSION and the calibration text, as it should)
    assert build_key("smollm2-moe", copies) == "e34ec7fc11e6"
    split = build_key("smollm2-moe", BuiltinTeacherOptions(experts="split"))
    assert split != build_key("smollm2-moe", copies)
    assert split != build_key("smollm2-moe", BuiltinTeacherOptions(experts="split", shared_channels=0.5))


def test_the_dense_parent_is_dequantised_once_then_loaded_from_the_cache(tmp_path, monkeypatch):
    from dataengine.teacher import builtin
    from tests.tiny_models import tiny_tokenizer

    monkeypatch.setenv("DATAENGINE_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "parent.Q4_1.gguf"
    gguf.write_bytes(b"the quantised weights")
    dense, tokenizer = tiny_dense(), tiny_tokenizer()
    dequantised = []
    monkeypatch.setattr(builtin, "load_dense", lambda path: dequantised.append(path) or (dense, tokenizer))
    lines: list[str] = []
    model, _ = builtin.load_dense_parent(gguf, lines.append)
    again, _ = builtin.load_dense_parent(gguf, lines.append)
    assert dequantised == [gguf] and len(lines) == 1 and "dequantising the dense parent parent.Q4_1.gguf" in lines[0]
    for loaded in (model, again):
        assert loaded is not dense and loaded.dtype == torch.float32
        for name, weight in dense.state_dict().items():
            assert torch.equal(loaded.state_dict()[name], weight), name
    models = tmp_path / "cache" / "models"
    assert [p.name for p in models.iterdir()] == [builtin.dense_parent_dir(gguf).name]  # no writer's folder left
    # other bytes are another parent: dequantised again, beside the first
    gguf.write_bytes(b"other quantised weights")
    builtin.load_dense_parent(gguf, lines.append)
    assert dequantised == [gguf, gguf] and len(list(models.iterdir())) == 2


def test_a_dense_parent_another_process_kept_first_is_used_and_a_read_only_cache_is_not_needed(tmp_path, monkeypatch):
    from dataengine.teacher import builtin
    from tests.tiny_models import tiny_tokenizer

    monkeypatch.setenv("DATAENGINE_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "parent.Q4_1.gguf"
    gguf.write_bytes(b"the quantised weights")
    dense, tokenizer = tiny_dense(), tiny_tokenizer()
    out = builtin.dense_parent_dir(gguf)

    def raced(path):  # another process keeps the same folder while this one dequantises
        builtin._keep_dense(dense, tokenizer, path, out)
        return dense, tokenizer

    monkeypatch.setattr(builtin, "load_dense", raced)
    model, _ = builtin.load_dense_parent(gguf, lambda _: None)
    assert model is not dense and [p.name for p in out.parent.iterdir()] == [out.name]

    # a cache it cannot write: the dequantised model itself, and a line that says so
    other = tmp_path / "other.Q4_1.gguf"
    other.write_bytes(b"other quantised weights")
    monkeypatch.setattr(builtin, "load_dense", lambda path: (dense, tokenizer))
    monkeypatch.setattr(dense, "save_pretrained", lambda folder: (_ for _ in ()).throw(PermissionError("read-only")))
    lines: list[str] = []
    model, _ = builtin.load_dense_parent(other, lines.append)
    assert model is dense and "could not keep the dense parent" in lines[-1] and "read-only" in lines[-1]
    assert not builtin.dense_parent_dir(other).exists() and [p.name for p in out.parent.iterdir()] == [out.name]
