"""Routing replay on a tiny random Mixtral: what is recorded is what the model's routers chose."""

from __future__ import annotations

import numpy as np
import torch

from dataengine.route.replay import moe_shape, route_batch, routers
from tests.tiny_models import tiny_mixtral, tiny_tokenizer

ROWS = [([5, 6, 7, 8, 9, 10], 3), ([11, 12, 13, 14, 15, 16, 17, 18, 19], 5), ([20, 21, 22, 23], 1)]


def _model():
    return tiny_mixtral(len(tiny_tokenizer()), seed=4)


def _router_choices(model, ids: list[int]) -> list[torch.Tensor]:
    """The indices each router returned when the row ran alone, unpadded (its own top-k), per layer."""
    seen = []
    handles = [m.register_forward_hook(lambda m, a, out: seen.append(out[2].clone())) for m in routers(model)]
    with torch.inference_mode():
        model(input_ids=torch.tensor([ids]))
    for h in handles:
        h.remove()
    return seen


def test_recorded_experts_are_the_routers_own_top_k():
    model = _model()
    assert moe_shape(model) == (2, 4, 2)
    for (ids, start), routed in zip(ROWS, route_batch(model, ROWS, pad_id=0), strict=True):
        answer = len(ids) - start
        assert routed.choices.shape == (answer, 2, 2) and routed.probs.shape == (answer, 2, 4)
        for layer, chosen in enumerate(_router_choices(model, ids)):
            assert np.array_equal(routed.choices[:, layer], chosen[start:].numpy())
        # the probabilities are the router's softmax: the chosen experts are the most probable
        best = np.argsort(-routed.probs, axis=-1)[..., :2]
        assert np.array_equal(np.sort(best, axis=-1), np.sort(routed.choices, axis=-1))
        assert np.allclose(routed.probs.sum(axis=-1), 1.0, atol=1e-5)


def test_batching_does_not_change_the_routing():
    model = _model()
    together = route_batch(model, ROWS, pad_id=0)
    alone = [route_batch(model, [row], pad_id=0)[0] for row in ROWS]
    for a, b in zip(together, alone, strict=True):
        assert np.array_equal(a.choices, b.choices)
        assert np.allclose(a.probs, b.probs, atol=1e-5)
