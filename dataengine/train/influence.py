"""Which decoder layers a student can lose (`train.student.prune.method: block_influence`).

ShortGPT's Block Influence (Men et al. 2024): a layer that barely turns its input hidden state is one the
model can do without, BI_i = 1 - mean over tokens of cos(h_in, h_out). Measured on a sample of the rows the
student will train on; the layers with the lowest scores are dropped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


def block_influence(model: nn.Module, sequences: list[list[int]]) -> list[float]:
    """Per decoder layer, 1 - the mean cosine similarity of every token's hidden state before and after it,
    over `sequences` (token ids, run one at a time: no padding to mask)."""
    import torch

    layers = model.model.layers
    sums = torch.zeros(len(layers), dtype=torch.float64)

    def hook(index: int):
        def record(module, args, kwargs, output) -> None:
            before = args[0] if args else kwargs["hidden_states"]
            after = output[0] if isinstance(output, tuple) else output
            cos = torch.nn.functional.cosine_similarity(before.float(), after.float(), dim=-1)
            sums[index] += cos.double().sum()

        return record

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    tokens = forward_each(model, sequences, handles)
    return (1 - sums / max(tokens, 1)).tolist()


def forward_each(model: nn.Module, sequences: list[list[int]], handles: list) -> int:
    """Run `model` on each sequence alone (no padding to mask), then remove the hooks `handles` that record
    what it does; returns the tokens seen. Block Influence and width pruning's channel importance share it."""
    import torch

    tokens = 0
    try:
        with torch.inference_mode():
            for ids in sequences:
                model(input_ids=torch.tensor([ids], device=model.device), use_cache=False)
                tokens += len(ids)
    finally:
        for handle in handles:
            handle.remove()
    return tokens


def most_influential(scores: list[float], keep: int) -> list[int]:
    """The `keep` layers with the highest scores, in model order (ties to the earlier layer)."""
    ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return sorted(ranked[:keep])
