"""Filters on the question the teacher wrote (chat rows of task `instruct_answer`) and on answers that ask
back instead of answering: the failure modes of generated prompts, in every shipped language.

A document here is one sample row: `text` is the assistant's answer and `metadata` the whole row.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

import yaml
from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter

from dataengine.curate.scripts import UNSPACED
from dataengine.rows import last_user_turn, primary_language

# fewer letters or digits than this and the question says nothing
MIN_CONTENT_CHARS = 8
# an answer that asks back is short: a long answer that ends by offering more help still answers
ASK_BACK_MAX_CHARS = 400
_WORD = re.compile(r"\w+")


@cache
def shipped_question_phrases() -> dict[str, dict[str, list[str]]]:
    text = resources.files("dataengine.curate").joinpath("data", "questions.yaml").read_text("utf-8")
    return yaml.safe_load(text)


def _phrases(kind: str, language: str) -> list[str]:
    lists = shipped_question_phrases()[kind]
    return [p.lower() for p in lists.get("any", []) + lists.get(language, [])]


def _grams(text: str, language: str, n: int = 3) -> set[tuple[str, ...]]:
    """Word n-grams, or character n-grams for scripts without spaces."""
    units = [c for c in text.lower() if c.isalnum()] if language in UNSPACED else _WORD.findall(text.lower())
    return {tuple(units[i : i + n]) for i in range(len(units) - n + 1)}


def echo_share(question: str, instruction: str, language: str, own: tuple[str, ...] = ()) -> float:
    """The share of the question's word trigrams (character trigrams in unspaced scripts) found in the
    meta-prompt, less its `own` words (the topic, the persona): those belong in a good question."""
    ours = _grams(question, language)
    if not ours:
        return 0.0
    for words in own:
        instruction = instruction.replace(words, " ") if words else instruction
    return len(ours & _grams(instruction, language)) / len(ours)


class QuestionFilter(BaseFilter):
    """A generated question that is empty of content, addresses the user (offers help, asks for a question)
    or echoes the meta-prompt; an answer that only asks back. Questions from a prompt file are the user's
    own and pass; the ask-back check reads every chat answer."""

    name = "❓ question"

    def __init__(self, max_echo: float, exclusion_writer: DiskWriter | None = None) -> None:
        super().__init__(exclusion_writer)
        self.max_echo = max_echo

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        row = doc.metadata
        if row.get("kind") != "chat":
            return True
        language = primary_language(row.get("language") or "")
        if row.get("task") == "instruct_answer":
            question = last_user_turn(row.get("messages") or [])
            if sum(c.isalnum() for c in question) < MIN_CONTENT_CHARS:
                return False, "question_empty"
            lowered = question.lower()
            if any(p in lowered for p in _phrases("addresses_user", language)):
                return False, "question_addresses_user"
            own = (row.get("topic") or "", row.get("persona") or "")
            echo = echo_share(question, row.get("instruction") or "", language, own)
            if echo > self.max_echo:
                return False, "question_echoes_prompt"
        answer = doc.text.strip().lower()
        if len(answer) <= ASK_BACK_MAX_CHARS and any(p in answer for p in _phrases("asks_back", language)):
            return False, "answer_asks_back"
        return True
