"""The small readings of a row's text that every stage makes: the last user turn, the answer, the prompt's key,
the language subtag, and the prompt/answer token layout."""

from __future__ import annotations

import json


def last_user_turn(messages: list[dict]) -> str:
    """The question the answer answers."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def prompt_key(turns: list[dict]) -> str:
    """The turns before an answer as one string: rows (their messages but the last) and preference pairs
    (their `prompt`) with the same key answer the same prompt."""
    return json.dumps([[t["role"], t["content"]] for t in turns], ensure_ascii=False)


def answer(row: dict) -> str:
    messages = row.get("messages") or []
    return messages[-1]["content"] if messages else ""


def primary_language(tag: str) -> str:
    """The language subtag of a BCP-47 code (pt-BR -> pt), what language identification reports."""
    return tag.split("-")[0].lower()


def _ids(encoded) -> list[int]:
    # transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True)
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def conversation_ids(tokenizer, messages: list[dict]) -> tuple[list[int], int, list[int] | None]:
    """Token ids of the whole conversation, where its first assistant turn starts, and for a conversation of
    several assistant turns a mask over the ids from there: 1 on every assistant turn's tokens, 0 on the user
    turns between them (None for one turn, whose tokens from the start are all the answer's). Each turn is
    located by rendering the conversation up to it; a chat template that renders an earlier turn differently
    once more follows gives the last turn alone."""
    full, start = prompt_and_full_ids(tokenizer, messages)
    answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if len(answers) <= 1:
        return full, start, None
    spans = []
    for i in answers:
        before = _ids(tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True, tokenize=True))
        upto = _ids(tokenizer.apply_chat_template(messages[: i + 1], tokenize=True))
        if upto[: len(before)] != before or full[: len(upto)] != upto:
            return full, start, None
        spans.append((len(before), len(upto)))
    first = spans[0][0]
    mask = [0] * (len(full) - first)
    for a, b in spans:
        mask[a - first : b - first] = [1] * (b - a)
    return full, first, mask


def prompt_and_full_ids(tokenizer, messages: list[dict]) -> tuple[list[int], int]:
    """Token ids of the whole conversation and where the final (assistant) answer starts. Scoring, offline
    distillation and evaluation must agree on which tokens are the answer, so it is computed here only."""
    prompt = _ids(tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True))
    full = _ids(tokenizer.apply_chat_template(messages, tokenize=True))
    if full[: len(prompt)] != prompt:
        raise ValueError("the chat template renders the prompt differently once the answer is appended")
    return full, len(prompt)
