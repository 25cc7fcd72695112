"""A thinking teacher's reasoning: read apart from its answer, and put back in the form a student learns it.

A teacher served with a vLLM reasoning parser returns its reasoning in the message's `reasoning` field (older
servers: `reasoning_content`) and the answer in `content`. A teacher served without one writes it inline:
`<think>…</think>` before the answer, or only the closing tag when the chat template opened the block itself
(DeepSeek-R1, Qwen3-Thinking). Either way the row keeps the reasoning in its own column, never in the answer.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from dataengine.errors import StageError
from dataengine.recipe import ReasoningFormat, Recipe

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_CLOSE_LINE = re.compile(r"(?:^|\n)[ \t]*(</think>)[ \t]*(?:\n|$)")


class Reasoning(NamedTuple):
    """What the teacher wrote, read apart: its reasoning (None when it wrote none), its answer, and whether the
    reasoning was closed (None without reasoning)."""

    reasoning: str | None
    answer: str
    closed: bool | None


def split_reasoning(text: str, served: str | None, finish_reason: str | None) -> Reasoning:
    """The reasoning and the answer of one teacher output: `text` is the message's content and `served` the
    reasoning a server's parser returned apart (None or "" without one).

    A parser's reasoning with no answer after it, cut by the token cap, never closed: vLLM's parsers give all the
    text as reasoning when the closing tag never came. Inline, a `<think>` left open never closed either."""
    if served and served.strip():
        closed = bool(text.strip()) or finish_reason != "length"
        return Reasoning(served.strip(), text.strip(), closed)
    opens = text.lstrip().startswith(THINK_OPEN)
    # the closing tag ends the reasoning when the text opened it, or, where the chat template opened it, when it
    # stands on its own line (DeepSeek-R1's and Qwen3's "\n</think>\n\n"): an answer that mentions the tag is
    # not reasoning
    close = text.find(THINK_CLOSE) if opens else _own_line_close(text)
    if close >= 0:
        thought = text[:close].replace(THINK_OPEN, "", 1).strip()
        tail = text[close + len(THINK_CLOSE) :].strip()
        # an empty block (what Qwen3 writes with thinking off) is no reasoning
        return Reasoning(thought, tail, True) if thought else Reasoning(None, tail, None)
    if opens:
        return Reasoning(text.lstrip()[len(THINK_OPEN) :].strip(), "", False)
    return Reasoning(None, text, None)


def _own_line_close(text: str) -> int:
    """Where a closing tag that stands on a line of its own starts, or -1."""
    found = _CLOSE_LINE.search(text)
    return found.start(1) if found else -1


def with_reasoning(messages: list[dict], reasoning: str | None, form: ReasoningFormat) -> list[dict]:
    """The conversation as a student learns it: the final assistant turn carries its reasoning, inline in
    `<think>` tags (`think_tags`) or in the turn's `reasoning_content`, which chat templates with a thinking
    section render (`template`). Without reasoning, the messages as they are."""
    if not reasoning:
        return messages
    last = messages[-1]
    if form == "think_tags":
        turn = {**last, "content": f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}\n\n{last['content']}"}
    else:
        turn = {**last, "reasoning_content": reasoning}
    return [*messages[:-1], turn]


_PROBE = "reasoning-probe-7f3a"


def renders_reasoning(tokenizer) -> bool:
    """Whether the tokenizer's chat template writes an assistant turn's `reasoning_content` (Qwen3's does; a
    template without a thinking section drops it, and the student would never see the reasoning)."""
    turns = with_reasoning(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], _PROBE, "template"
    )
    return _PROBE in tokenizer.apply_chat_template(turns, tokenize=False)


def reasoning_form(recipe: Recipe) -> ReasoningFormat:
    """How the recipe's training conversations carry reasoning (`train.reasoning_format`; tags without `train`)."""
    return recipe.train.reasoning_format if recipe.train is not None else "think_tags"


def reasoning_reads(recipe: Recipe) -> tuple[str, ...]:
    """What a stage that renders training conversations outside `train` (score) reads of it: the form, once a
    recipe sets it other than the default, so the keys of runs made before it stay what they were."""
    return ("train.reasoning_format",) if reasoning_form(recipe) != "think_tags" else ()


def require_reasoning_template(model: str | Path, who: str) -> None:
    """Refuse the `template` form for a model whose chat template would drop the reasoning."""
    from transformers import AutoTokenizer

    if not renders_reasoning(AutoTokenizer.from_pretrained(str(model))):
        raise StageError(
            f"train.reasoning_format: template, but {who}'s chat template ({model}) does not write an assistant "
            "turn's reasoning_content, so the reasoning would be lost; use think_tags, or a model whose template "
            "has a thinking section"
        )
