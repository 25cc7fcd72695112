"""How every renderer of a run (stage summaries, `dataengine status`, report.html, the dataset card) writes
its numbers, so the same figure reads the same everywhere.

Two blanks mean different things: NOT_APPLICABLE ("—") where the cell has no meaning for that row (a
stage that reads no rows has no "rows in"; a metric with no teacher counterpart), NO_VALUE ("n/a") where
it has one but the run could not measure it (a pass rate over held-out rows with no code among them).
"""

from __future__ import annotations

NOT_APPLICABLE = "—"
NO_VALUE = "n/a"


def metric(value: float | None) -> str:
    """A measured figure (loss, KL, perplexity, rate): four significant digits, large ones in full."""
    if value is None:
        return NO_VALUE
    return f"{value:,.0f}" if abs(value) >= 10_000 else f"{value:.4g}"


def metric_interval(value: float | None, interval: list[float] | None) -> str:
    """A measured figure and, when there is one, its 95% bootstrap interval: `9.918 [8.1, 12.3]`."""
    if value is None or not interval:
        return metric(value)
    return f"{metric(value)} [{metric(interval[0])}, {metric(interval[1])}]"


def count(value: int | None) -> str:
    """Rows, steps: in full, or NOT_APPLICABLE where the thing is not counted for this row."""
    return NOT_APPLICABLE if value is None else str(value)


def seconds(value: float | None) -> str:
    return NOT_APPLICABLE if value is None else f"{value:.0f}"


def text(value: str | None) -> str:
    return NOT_APPLICABLE if value is None else value
