"""Filters on the question the teacher wrote (chat rows of task `instruct_answer`) and on answers that ask
back instead of answering: the failure modes of generated prompts, in every shipped language.

A document here is one sample row: `text` is the assistant's answer and `metadata` the whole row.
"""

from __future__ import annotations

import re
from functools import cache

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter

from dataengine.checks.scripts import UNSPACED
from dataengine.curate.filters.answer import shipped_phrases
from dataengine.curate.filters.decontamination import ngrams
from dataengine.rows import last_user_turn, primary_language

# fewer letters or digits than this and the question says nothing (a Chinese character carries a word)
MIN_CONTENT_CHARS = 8
MIN_CONTENT_CHARS_UNSPACED = 3
# an answer that asks back is short: a long answer that ends by offering more help still answers
ASK_BACK_MAX_CHARS = 400
ASK_BACK_MAX_CHARS_UNSPACED = 120
QUESTION_MARKS = ("?", "？")
_SENTENCE_END = re.compile(r"[.!?。！？]+")


@cache
def _phrases(kind: str, language: str) -> tuple[str, ...]:
    lists = shipped_phrases("questions.yaml")[kind]
    return tuple(p.lower() for p in lists.get("any", []) + lists.get(language, []))


def _grams(text: str, language: str, n: int = 3) -> set[str]:
    """Word n-grams, or character n-grams for scripts without spaces."""
    if language in UNSPACED:
        chars = [c for c in text.lower() if c.isalnum()]
        return {"".join(chars[i : i + n]) for i in range(len(chars) - n + 1)}
    return ngrams(text, n)


def asks_back(answer: str, language: str) -> bool:
    """A short answer that is a request for the question or for details: one of its sentences starts with
    one of the language's ask-back phrases, or it holds one and ends in a question mark."""
    text = answer.strip().lower()
    if len(text) > (ASK_BACK_MAX_CHARS_UNSPACED if language in UNSPACED else ASK_BACK_MAX_CHARS):
        return False
    ends_asking = text.rstrip("\"'”»」 ").endswith(QUESTION_MARKS)
    sentences = [s.strip() for s in _SENTENCE_END.split(text)]
    return any(
        (ends_asking and p in text) or any(sentence.startswith(p) for sentence in sentences)
        for p in _phrases("asks_back", language)
    )


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
    """A generated question that is empty of content, cut off by question_max_tokens, addresses the user
    (offers help, asks for a question) or echoes the meta-prompt; an answer that only asks back. Questions
    from a prompt file are the user's own and pass; the ask-back check reads every chat answer."""

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
            least = MIN_CONTENT_CHARS_UNSPACED if language in UNSPACED else MIN_CONTENT_CHARS
            if sum(c.isalnum() for c in question) < least:
                return False, "question_empty"
            if row.get("question_finish_reason") == "length" and not question.rstrip().endswith(QUESTION_MARKS):
                return False, "question_truncated"
            lowered = question.lower()
            if any(p in lowered for p in _phrases("addresses_user", language)):
                return False, "question_addresses_user"
            own = (row.get("topic") or "", row.get("persona") or "")
            echo = echo_share(question, row.get("instruction") or "", language, own)
            if echo > self.max_echo:
                return False, "question_echoes_prompt"
        if asks_back(doc.text, language):
            return False, "answer_asks_back"
        return True
