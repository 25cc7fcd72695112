"""Routing by replay: prompt + answer through the teacher in transformers, recording at every MoE layer the
experts each answer token was routed to and the router's probabilities.

transformers' MoE routers (MixtralTopKRouter, Qwen2MoeTopKRouter, OlmoeTopKRouter, ... and DeepSeek's
TopkRouter) are submodules; a forward hook on each records what it returned. Routers that return their own
top-k indices (logits, scores, indices) are recorded exactly; for one that returns only logits the top-k of
their softmax is taken (the rule of Mixtral-style routers; a grouped router such as DeepSeek-V3's picks
differently).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dataengine.experts.routers import is_router, moe_dims


@dataclass
class Routed:
    """One row's answer tokens: the experts chosen at every layer and the router's probabilities."""

    choices: np.ndarray  # [answer tokens, layers, top_k] expert ids, best first
    probs: np.ndarray  # [answer tokens, layers, experts] softmax of the router logits


def routers(model: nn.Module) -> list[nn.Module]:
    """The model's routers, in layer order."""
    return [m for m in model.modules() if is_router(m)]


def moe_shape(model: nn.Module) -> tuple[int, int, int]:
    """(MoE layers, experts, top_k) of a transformers MoE."""
    dims = moe_dims(model.config.to_dict())
    found = routers(model)
    if not found or dims is None:
        raise ValueError(f"{type(model).__name__} is not a Mixture-of-Experts model transformers can replay")
    return len(found), *dims


class _Recorder:
    def __init__(self, model: nn.Module, top_k: int) -> None:
        self.top_k = top_k
        self.logits: list[torch.Tensor] = []
        self.indices: list[torch.Tensor | None] = []
        self.handles = [m.register_forward_hook(self._record) for m in routers(model)]

    def _record(self, module: nn.Module, args, output) -> None:
        logits = output[0] if isinstance(output, tuple) else output
        self.logits.append(logits.detach().float())
        given = output[-1] if isinstance(output, tuple) and len(output) == 3 else None
        self.indices.append(given.detach() if given is not None and not given.is_floating_point() else None)

    def take(self) -> tuple[torch.Tensor, torch.Tensor]:
        """[layers, positions, experts] probabilities and [layers, positions, top_k] choices of the last
        forward pass."""
        probs = torch.stack([torch.softmax(logits, dim=-1) for logits in self.logits])
        choices = torch.stack(
            [
                given if given is not None else torch.topk(p, self.top_k, dim=-1).indices
                for given, p in zip(self.indices, probs, strict=True)
            ]
        )
        self.logits, self.indices = [], []
        return probs, choices

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


@torch.inference_mode()
def route_batch(model: nn.Module, rows: list[tuple[list[int], int]], pad_id: int) -> list[Routed]:
    """Route a batch of (token ids of prompt + answer, index of the answer's first token), right-padded with
    an attention mask so that padding changes nothing the real tokens see."""
    _, _, top_k = moe_shape(model)
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, _) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(ids)] = 1
    recorder = _Recorder(model, top_k)
    try:
        model(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device), use_cache=False)
        probs, choices = recorder.take()
    finally:
        recorder.close()
    probs, choices = probs.cpu(), choices.cpu()
    layers = probs.shape[0]
    probs = probs.reshape(layers, len(rows), width, -1)
    choices = choices.reshape(layers, len(rows), width, -1)
    out = []
    for i, (ids, start) in enumerate(rows):
        answer = slice(start, len(ids))
        out.append(
            Routed(
                choices=choices[:, i, answer].permute(1, 0, 2).numpy().astype(np.int16),
                probs=probs[:, i, answer].permute(1, 0, 2).numpy().astype(np.float32),
            )
        )
    return out
