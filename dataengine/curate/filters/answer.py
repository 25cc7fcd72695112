"""Filters on the teacher's answer: truncation, length, refusals and assistant boilerplate.

A document here is one sample row: `text` is the assistant's answer and `metadata` the whole row.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import yaml
from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter

from dataengine.rows import primary_language


class TruncationFilter(BaseFilter):
    """Answers cut off by the token limit, or that leave a code fence open, teach the student to stop mid-thought."""

    name = "✂️ truncated"

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if doc.metadata.get("finish_reason") == "length":
            return False, "truncated"
        if doc.text.count("```") % 2 == 1:
            return False, "unclosed_code_fence"
        return True


class LengthFilter(BaseFilter):
    name = "📏 answer length"

    def __init__(self, min_chars: int, max_chars: int, exclusion_writer: DiskWriter | None = None) -> None:
        super().__init__(exclusion_writer)
        self.min_chars, self.max_chars = min_chars, max_chars

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        size = len(doc.text.strip())
        if size == 0:
            return False, "empty_answer"
        if size < self.min_chars:
            return False, "too_short"
        if size > self.max_chars:
            return False, "too_long"
        return True


@cache
def shipped_phrases(name: str) -> dict:
    """A phrase file of curate/data/ (refusals.yaml): lists per language."""
    return yaml.safe_load(resources.files("dataengine.curate").joinpath("data", name).read_text("utf-8"))


class RefusalFilter(BaseFilter):
    """Refusals, "as an AI language model" boilerplate and identity leaks, by per-language phrase lists."""

    name = "🙅 refusal"

    def __init__(self, extra_phrases: list[str] | None = None, exclusion_writer: DiskWriter | None = None) -> None:
        super().__init__(exclusion_writer)
        shipped = shipped_phrases("refusals.yaml")
        common = [p.lower() for p in shipped.get("any", []) + list(extra_phrases or [])]
        self.phrases = {lang: common + [p.lower() for p in phrases] for lang, phrases in shipped.items()}
        self.common = common

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        answer = doc.text.lower()
        language = primary_language(doc.metadata.get("language", ""))
        for phrase in self.phrases.get(language, self.common):
            if phrase in answer:
                return False, "refusal"
        return True
