"""The filters on a thinking teacher's reasoning (the row's `reasoning` column, rows/reasoning.py). Rows without
reasoning pass. They run first: an unclosed reasoning is also a truncated answer, and its reason is the precise one.
"""

from __future__ import annotations

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter

from dataengine.checks.language import detect_language
from dataengine.rows import primary_language


class ReasoningFilter(BaseFilter):
    """Reasoning never closed, no answer after it, reasoning over its token budget, reasoning in another language
    than the one asked (`same_language`), and an answer copied verbatim out of the reasoning."""

    name = "🤔 reasoning"

    def __init__(
        self,
        max_tokens: int | None,
        same_language: bool,
        min_copied_chars: int,
        exclusion_writer: DiskWriter | None = None,
    ) -> None:
        super().__init__(exclusion_writer)
        self.max_tokens, self.same_language, self.min_copied_chars = max_tokens, same_language, min_copied_chars

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        row = doc.metadata
        reasoning = row.get("reasoning")
        if reasoning is None:
            return True
        if not row.get("reasoning_closed"):
            return False, "reasoning_unclosed"
        if not doc.text.strip():
            return False, "answer_missing"
        if self.max_tokens is not None and (row.get("reasoning_tokens") or 0) > self.max_tokens:
            return False, "reasoning_too_long"
        if self.same_language and detect_language(reasoning)[0] != primary_language(row.get("language", "")):
            return False, "reasoning_wrong_language"
        answer = " ".join(doc.text.split())
        if len(answer) >= self.min_copied_chars and answer in " ".join(reasoning.split()):
            return False, "answer_copied_from_reasoning"
        return True
