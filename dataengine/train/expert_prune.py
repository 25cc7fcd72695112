"""An MoE student with fewer experts (`train.student.from_teacher.keep_experts`): the teacher itself, each
layer keeping the experts that score highest on the run's rows and its router keeping their rows, so the
student is still an MoE of the teacher's architecture, served and trained like it (REAP, NAEE: pruning
experts an MoE's data rarely needs keeps most of its quality at a fraction of its memory).
"""

from __future__ import annotations

import copy
import re
from typing import TYPE_CHECKING

from dataengine.errors import UserError
from dataengine.teacher.builtin import load_every_weight

if TYPE_CHECKING:
    from torch import nn

# experts module weights ([experts, ...]) and router rows ([experts, hidden]) of a layer's MoE block
_PER_EXPERT = re.compile(r"^(?:.*\.)?layers\.(\d+)\.mlp\.(?:experts\.(?:gate_up_proj|down_proj)|gate\.weight)$")
# the config keys of how many experts there are, by the name each architecture gives them
EXPERT_COUNT_KEYS = ("num_local_experts", "num_experts")


def keep_experts(moe: nn.Module, kept: list[list[int]]) -> nn.Module:
    """A model of `moe`'s architecture whose layer i keeps the experts `kept[i]` (the same number in every
    layer), with their router rows; every other weight copied. Top-k is capped at the experts kept."""
    import torch
    from transformers import AutoModelForCausalLM

    keep = len(kept[0])
    if any(len(layer) != keep for layer in kept):
        raise ValueError("every layer must keep as many experts: transformers' MoE configs hold one count")
    config = copy.deepcopy(moe.config)
    text = config.get_text_config()
    key = next((k for k in EXPERT_COUNT_KEYS if getattr(text, k, None)), None)
    if key is None or not hasattr(text, "num_experts_per_tok"):
        raise UserError(f"train.student.from_teacher.keep_experts: {text.model_type} declares no expert count")
    setattr(text, key, keep)
    text.num_experts_per_tok = min(text.num_experts_per_tok, keep)
    state = {}
    for name, tensor in moe.state_dict().items():
        match = _PER_EXPERT.match(name)
        if match:
            tensor = tensor.index_select(0, torch.tensor(kept[int(match.group(1))], device=tensor.device))
        state[name] = tensor.clone()
    student = AutoModelForCausalLM.from_config(config, dtype=next(moe.parameters()).dtype)
    return load_every_weight(student, state, "keeping experts")
