"""A row's `kind/language` group: the unit that quotas, top-up rounds and the report count rows in."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import NamedTuple


class Group(NamedTuple):
    """A row's kind and language: the unit that quotas, top-up rounds and the report count rows in. Files
    holding a count per group (manifests, top_up.json) key it by `str(group)`, "kind/language"."""

    kind: str
    language: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.language}"

    @classmethod
    def of(cls, row: dict) -> Group:
        return cls(row["kind"], row["language"])

    @classmethod
    def parse(cls, key: str) -> Group:
        kind, _, language = key.partition("/")
        return cls(kind, language)


def count_groups(rows: Iterable[dict]) -> dict[str, int]:
    """Rows per group, as a file stores them: keyed by "kind/language", in group order."""
    return group_counts(Counter(Group.of(r) for r in rows))


def group_counts(counts: Counter[Group]) -> dict[str, int]:
    """Counts per group as a file stores them (rows counted one at a time, as they streamed by)."""
    return {str(g): n for g, n in sorted(counts.items())}
