"""Rows as TRL's trainers take them."""

from __future__ import annotations


def prompt_completion(messages: list[dict]) -> dict:
    """TRL's conversational prompt-completion form: its completion-only loss then covers the answer alone."""
    return {"prompt": messages[:-1], "completion": messages[-1:]}
