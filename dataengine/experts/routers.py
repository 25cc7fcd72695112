"""Recognising an MoE and its routers without loading anything heavy."""

from __future__ import annotations

from typing import Any


def is_router(module: Any) -> bool:
    """transformers' MoE routers: MixtralTopKRouter, Qwen2MoeTopKRouter, OlmoeTopKRouter, DeepseekV3TopkRouter..."""
    return type(module).__name__.lower().endswith("topkrouter")


def moe_config(config: dict) -> bool:
    """A model config.json (or its text_config) that declares experts."""
    text = config.get("text_config") or config
    return bool(text.get("num_local_experts") or text.get("num_experts"))
