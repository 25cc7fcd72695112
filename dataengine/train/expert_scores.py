"""How much each of an MoE's experts matters to the data (`train.student.from_teacher.expert_score`): the one
scoring step behind both ways a student is made from the teacher's experts, merged into a dense MLP or kept
as an MoE with fewer experts.

- `frequency`: each expert's share of the token slots the data routes to it (the route stage's map counts
  it over the answer tokens of every kept row; this pass over the prompt and answer tokens of a sample).
- `reap`: REAP's router-weighted expert activation pruning criterion (Lasby et al. 2025), the mean over the
  tokens routed to an expert of its gate weight times the norm of its output, S_e = mean_{x in X_e}
  g_e(x) ||f_e(x)||: an expert that is picked often but adds little scores low.

Both come from one pass with a hook on every layer's experts module, which transformers calls with the
hidden states, the chosen experts and their weights (Mixtral, Qwen3-MoE and the other fused-expert MoEs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from dataengine.errors import UserError
from dataengine.train.influence import forward_each, most_influential

if TYPE_CHECKING:
    from torch import nn


def expert_modules(moe: nn.Module) -> list[nn.Module]:
    """Every layer's experts module: 3D `gate_up_proj` [experts, 2 * width, hidden] and `down_proj`."""
    found = [
        m for m in moe.modules() if hasattr(m, "gate_up_proj") and hasattr(m, "down_proj") and hasattr(m, "act_fn")
    ]
    if not found:
        raise ValueError(f"{type(moe).__name__} has no fused experts (gate_up_proj, down_proj) to score")
    return found


def score_experts(moe: nn.Module, sequences: list[list[int]]) -> dict[str, np.ndarray]:
    """{criterion: [layers, experts]} over every token of `sequences` (token ids, run one at a time). An
    expert no token reached scores 0 on both."""
    import torch

    modules = expert_modules(moe)
    experts = modules[0].gate_up_proj.shape[0]
    slots = np.zeros((len(modules), experts))
    weighted = np.zeros((len(modules), experts))

    def hook(index: int):
        def record(module, args) -> None:
            hidden, chosen, weights = args[0], args[1], args[2]
            for e in chosen.unique().tolist():
                token, slot = torch.where(chosen == e)
                gate, up = torch.nn.functional.linear(hidden[token], module.gate_up_proj[e]).chunk(2, dim=-1)
                out = torch.nn.functional.linear(module.act_fn(gate) * up, module.down_proj[e])
                slots[index, e] += len(token)
                weighted[index, e] += (weights[token, slot].float() * out.float().norm(dim=-1)).sum().item()

        return record

    handles = [m.register_forward_pre_hook(hook(i)) for i, m in enumerate(modules)]
    forward_each(moe, sequences, handles)
    totals = slots.sum(axis=1, keepdims=True)
    return {
        "frequency": np.divide(slots, totals, out=np.zeros_like(slots), where=totals > 0),
        "reap": np.divide(weighted, slots, out=np.zeros_like(weighted), where=slots > 0),
    }


def scores_for(scores, layers: int, experts: int) -> np.ndarray:
    """`scores` as a [layers, experts] array, refused with the reason when they are of another teacher."""
    shares = np.asarray(scores, dtype=np.float64)
    if shares.shape != (layers, experts):
        raise UserError(
            f"the experts' scores are {shares.shape[0]} layers x {shares.shape[1]} experts, the teacher "
            f"{layers} x {experts}: a routing map made with another model, or MoE layers that are not every layer"
        )
    return shares


def kept_experts(scores: np.ndarray, keep: int) -> list[list[int]]:
    """Per layer, the `keep` experts with the highest scores, in index order (ties to the lower index): the
    rule Block Influence keeps layers by."""
    return [most_influential(row.tolist(), keep) for row in np.asarray(scores)]
