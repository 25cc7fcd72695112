"""How sure a held-out metric is: a percentile bootstrap over the held-out rows.

A held-out set of a few rows gives numbers that move a lot from one draw to the next; each metric is
reported with the 95% interval of its value over rows resampled with replacement (1,000 resamples, a
fixed seed, so a rerun prints the same interval).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

RESAMPLES = 1000


def bootstrap(
    per_row: np.ndarray, statistic: Callable[[np.ndarray], float], level: float = 0.95, seed: int = 0
) -> list[float] | None:
    """[low, high] of `statistic` over `per_row` ([rows, ...]) resampled by row; None with fewer than 2 rows."""
    per_row = np.asarray(per_row, dtype=np.float64)
    if len(per_row) < 2:
        return None
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(per_row), size=(RESAMPLES, len(per_row)))
    values = np.array([statistic(per_row[d]) for d in draws])
    values = values[np.isfinite(values)]
    tail = (1 - level) / 2 * 100
    return [round(float(v), 6) for v in np.percentile(values, [tail, 100 - tail])]


def ratio(per_row: np.ndarray) -> float:
    """Σ numerator / Σ denominator over rows given as [numerator, denominator] (a per-token mean)."""
    return per_row[:, 0].sum() / per_row[:, 1].sum() if per_row[:, 1].sum() else float("nan")


def perplexity(per_row: np.ndarray) -> float:
    """exp of the per-token negative log-likelihood, rows given as [nll sum, tokens]."""
    return float(np.exp(ratio(per_row)))


def share(per_row: np.ndarray) -> float:
    """The share of rows that passed, rows given as 1.0 or 0.0."""
    return float(per_row.mean())
