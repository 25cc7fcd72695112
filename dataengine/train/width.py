"""Which MLP channels a student can lose (`train.student.prune.intermediate_size`).

Minitron's width pruning (Muralidharan et al. 2024): a channel of a gated MLP whose activation, the input of
`down_proj` (act(gate(x)) * up(x)), stays small on the data contributes little to the layer's output. Each
channel's importance is the mean magnitude of that activation over the tokens of a sample of the rows the
student will train on; every layer keeps its most important channels. transformers' Llama, Mistral and
Qwen3 configs hold one `intermediate_size` for all layers, so every layer keeps the same number.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dataengine.train.influence import forward_each

if TYPE_CHECKING:
    import torch
    from torch import nn


def channel_importance(model: nn.Module, sequences: list[list[int]]) -> list[torch.Tensor]:
    """Per decoder layer, the mean |activation| of every MLP channel over the tokens of `sequences` (token
    ids, run one at a time: no padding to mask)."""
    import torch

    layers = model.model.layers
    sums = [torch.zeros(layer.mlp.down_proj.in_features, dtype=torch.float64) for layer in layers]

    def hook(index: int):
        def record(module, args) -> None:
            sums[index] += args[0].detach().abs().double().reshape(-1, args[0].shape[-1]).sum(dim=0).cpu()

        return record

    handles = [layer.mlp.down_proj.register_forward_pre_hook(hook(i)) for i, layer in enumerate(layers)]
    tokens = forward_each(model, sequences, handles)
    return [s / max(tokens, 1) for s in sums]


def keep_channels(model: nn.Module, importance: list[torch.Tensor], keep: int) -> list[list[int]]:
    """Keep, in place, each layer's `keep` most important MLP channels (in their order; ties to the lower
    index): gate and up projections lose rows, the down projection the matching columns. Returns the kept
    channel indices per layer."""
    import torch

    kept = []
    for layer, scores in zip(model.model.layers, importance, strict=True):
        # a stable sort on -score keeps the lower index first among equal scores
        order = torch.sort(-scores, stable=True).indices[:keep]
        index = torch.sort(order).values
        mlp = layer.mlp
        for name in ("gate_proj", "up_proj"):
            setattr(mlp, name, _sliced(getattr(mlp, name), index, dim=0))
        mlp.down_proj = _sliced(mlp.down_proj, index, dim=1)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = keep
        kept.append(index.tolist())
    model.config.intermediate_size = keep
    return kept


def _sliced(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A copy of `linear` keeping the output features (dim 0) or input features (dim 1) at `index`."""
    from torch import nn

    weight = linear.weight.detach().index_select(dim, index).clone()
    out_features, in_features = weight.shape
    sliced = nn.Linear(in_features, out_features, bias=linear.bias is not None, dtype=weight.dtype)
    sliced.weight.data = weight
    if linear.bias is not None:
        bias = linear.bias.detach()
        sliced.bias.data = (bias.index_select(0, index) if dim == 0 else bias).clone()
    return sliced
