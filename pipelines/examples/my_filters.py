"""A filter of your own for `curate.filters.custom` (see custom_filter.yaml next to this file).

Any datatrove `BaseFilter` subclass works: dataengine builds it with the entry's `args` as keyword arguments,
hands it each row as a document (`doc.text` is the teacher's answer, `doc.metadata` the whole row: `kind`,
`language`, `messages`, ...) and writes the rows it drops to rejected/, with the entry's name as the step and
the reason `filter` returns.
"""

from __future__ import annotations

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter


class NoDigits(BaseFilter):
    """Drops answers with more than `max_digits` digits (reason `too_many_digits`)."""

    name = "🔢 no digits"

    def __init__(self, max_digits: int = 3) -> None:
        super().__init__()
        if max_digits < 0:
            raise ValueError(f"max_digits must be 0 or more, not {max_digits}")
        self.max_digits = max_digits

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if sum(ch.isdigit() for ch in doc.text) > self.max_digits:
            return False, "too_many_digits"
        return True
