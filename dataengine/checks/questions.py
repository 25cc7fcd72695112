"""The checks on a question the teacher wrote (from a meta-prompt, or a Magpie prompt from its chat template's
pre-query text) and on answers that ask back instead of answering: the failure modes of generated prompts, in
every shipped language (phrase lists in dataengine/data/questions.yaml). Curation's question filter applies them
to the rows; generation applies the question's to a Magpie prompt before the teacher answers it."""

from __future__ import annotations

import re
from functools import cache

from dataengine import data as shipped
from dataengine.checks.scripts import UNSPACED

# fewer letters or digits than this and the question says nothing (a Chinese character carries a word)
MIN_CONTENT_CHARS = 8
MIN_CONTENT_CHARS_UNSPACED = 3
# an answer that asks back is short: a long answer that ends by offering more help still answers
ASK_BACK_MAX_CHARS = 400
ASK_BACK_MAX_CHARS_UNSPACED = 120
QUESTION_MARKS = ("?", "？")
_SENTENCE_END = re.compile(r"[.!?。！？]+")
_WORD = re.compile(r"\w+", re.UNICODE)


@cache
def _phrases(kind: str, language: str) -> tuple[str, ...]:
    lists = shipped.load("questions.yaml")[kind]
    return tuple(p.lower() for p in lists.get("any", []) + lists.get(language, []))


def ngrams(text: str, n: int) -> set[str]:
    """Word n-grams of the lower-cased text."""
    words = _WORD.findall(text.lower())
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


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


def question_problem(question: str, finish_reason: str | None, language: str) -> str | None:
    """Why a question the teacher wrote is not one to answer (None when it is): empty of content, cut off by
    its token cap before its question mark, or addressed to the user (offering help, asking for a question)."""
    least = MIN_CONTENT_CHARS_UNSPACED if language in UNSPACED else MIN_CONTENT_CHARS
    if sum(c.isalnum() for c in question) < least:
        return "question_empty"
    if finish_reason == "length" and not question.rstrip().endswith(QUESTION_MARKS):
        return "question_truncated"
    lowered = question.lower()
    if any(p in lowered for p in _phrases("addresses_user", language)):
        return "question_addresses_user"
    return None
