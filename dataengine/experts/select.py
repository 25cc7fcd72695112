"""Choosing rows for an even expert load."""

from __future__ import annotations

import numpy as np


def mean_cv(counts: np.ndarray) -> np.ndarray:
    """Mean over layers of the coefficient of variation of expert load; `counts` is [..., layers, experts]."""
    counts = np.asarray(counts, dtype=np.float64)
    mean = counts.mean(axis=-1)
    cv = np.divide(counts.std(axis=-1), mean, out=np.zeros_like(mean), where=mean > 0)
    return cv.mean(axis=-1)


def even_subset(signatures: np.ndarray, n: int) -> list[int]:
    """Indices of `n` rows whose summed signatures ([rows, layers, experts] token slots) load the experts as
    evenly as this greedy finds: each step adds the row after which the mean per-layer CV is lowest (ties to
    the lower index). O(n x rows x layers x experts): seconds for thousands of rows."""
    signatures = np.asarray(signatures, dtype=np.float64)
    left = np.ones(len(signatures), dtype=bool)
    total = np.zeros(signatures.shape[1:])
    chosen: list[int] = []
    for _ in range(min(n, len(signatures))):
        scores = np.where(left, mean_cv(total[None] + signatures), np.inf)
        best = int(np.argmin(scores))
        chosen.append(best)
        left[best] = False
        total += signatures[best]
    return chosen
