"""A dense student built from an MoE teacher's experts (`train.student.from_teacher.merge_experts`).

The student is the dense sibling of the teacher's architecture (Mixtral -> Mistral, Qwen3-MoE -> Qwen3)
with the teacher's embeddings, attention, norms and tokenizer, and at each layer one MLP whose weights are
the average of that layer's experts' weights, weighted by each expert's score on the run's rows (`routing`:
`expert_score`, routing frequency or REAP, see expert_scores.py), equally (`uniform`), or all on the
highest-scoring expert (`top`). It is
the teacher's active size with nothing learnt from scratch; with identical experts (an upcycled MoE) it is
exactly the dense model they were copied from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from dataengine.errors import UserError
from dataengine.teacher.builtin import load_every_weight
from dataengine.train.expert_scores import scores_for

if TYPE_CHECKING:
    from torch import nn

# MoE model_type -> (dense config class in transformers, the MoE config key of the experts' MLP width)
DENSE_SIBLING = {
    "mixtral": ("MistralConfig", "intermediate_size"),
    "qwen3_moe": ("Qwen3Config", "moe_intermediate_size"),
}
METHODS = ("routing", "uniform", "top")


def merge_weights(method: str, layers: int, experts: int, scores: np.ndarray | None = None) -> np.ndarray:
    """[layers, experts] weights, each layer's summing to 1. `scores` are the experts' per-layer scores
    (any scale: the routing map's load, 1.0 = uniform, or expert_scores'); a layer the data never reached is
    merged uniformly."""
    if method == "uniform":
        return np.full((layers, experts), 1 / experts)
    if scores is None:
        raise ValueError(f"merge_experts: {method} weighs the experts by their scores: none given")
    shares = scores_for(scores, layers, experts)
    if method == "top":
        return np.eye(experts)[shares.argmax(axis=1)]
    totals = shares.sum(axis=1, keepdims=True)
    return np.where(totals > 0, shares / np.where(totals > 0, totals, 1), 1 / experts)


def dense_config(moe_config):
    """The dense sibling's config: every key of it the MoE's config has, the MLP width the experts'."""
    import transformers

    model_type = moe_config.model_type
    if model_type not in DENSE_SIBLING:
        raise UserError(
            f"train.student.from_teacher: merging experts supports {', '.join(sorted(DENSE_SIBLING))} teachers; "
            f"this one is {model_type} (shared experts or grouped routers have no dense equivalent here)"
        )
    class_name, width = DENSE_SIBLING[model_type]
    if getattr(moe_config, "mlp_only_layers", None) or getattr(moe_config, "decoder_sparse_step", 1) != 1:
        raise UserError("train.student.from_teacher: a teacher with dense MLP layers between its MoE layers")
    config_class = getattr(transformers, class_name)
    theirs = moe_config.to_dict()
    ours = {k: theirs[k] for k in config_class().to_dict() if k in theirs and k not in ("model_type", "architectures")}
    ours["intermediate_size"] = theirs[width]
    return config_class(**ours)


def merge_experts(moe: nn.Module, weights: np.ndarray) -> nn.Module:
    """The dense model whose layer-i MLP is sum_e weights[i, e] * expert e of `moe`'s layer i."""
    import torch
    from transformers import AutoModelForCausalLM

    config = dense_config(moe.config.get_text_config())
    dense = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    theirs = moe.state_dict()
    merged: dict[str, torch.Tensor] = {}
    for i in range(config.num_hidden_layers):
        experts = theirs[f"model.layers.{i}.mlp.experts.gate_up_proj"]
        w = torch.tensor(weights[i], dtype=torch.float32, device=experts.device)
        gate_up = torch.einsum("e,eoi->oi", w, experts.float())
        gate, up = gate_up.chunk(2, dim=0)  # the experts compute gate, up = linear(x, gate_up).chunk(2)
        merged[f"model.layers.{i}.mlp.gate_proj.weight"] = gate
        merged[f"model.layers.{i}.mlp.up_proj.weight"] = up
        down = theirs[f"model.layers.{i}.mlp.experts.down_proj"].float()
        merged[f"model.layers.{i}.mlp.down_proj.weight"] = torch.einsum("e,eoi->oi", w, down)
    state = {
        k: merged[k] if ".mlp." in k else theirs[k].float() for k in dense.state_dict() if k in theirs or k in merged
    }
    return load_every_weight(dense, state, "merging experts")
