"""The filter on math rows (generate.math): a problem cut off by its token cap, and a solution whose final answer
math-verify did not verify (the reason generation recorded: differs_from_reference, no_final_answer,
no_reference_or_majority). Other rows pass."""

from __future__ import annotations

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter


class MathFilter(BaseFilter):
    name = "🧮 math"

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        row = doc.metadata
        if row.get("kind") != "math":
            return True
        if row.get("question_finish_reason") == "length":
            return False, "problem_truncated"
        if not row.get("answer_verified"):
            return False, row.get("verify_reason") or "not_verified"
        return True
