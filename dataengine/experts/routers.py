"""Recognising an MoE and its routers without loading anything heavy."""

from __future__ import annotations

from typing import Any


def is_router(module: Any) -> bool:
    """transformers' MoE routers: MixtralTopKRouter, Qwen2MoeTopKRouter, OlmoeTopKRouter, DeepseekV3TopkRouter..."""
    return type(module).__name__.lower().endswith("topkrouter")


def moe_dims(config: dict) -> tuple[int, int] | None:
    """(experts, experts per token) that a model's config.json (or its text_config) declares; None for a
    dense model."""
    text = config.get("text_config") or config
    experts = text.get("num_local_experts") or text.get("num_experts")
    top_k = text.get("num_experts_per_tok")
    return (int(experts), int(top_k)) if experts and top_k else None
