"""Choosing rows for an even expert load."""

from __future__ import annotations

import math

import numpy as np

# Above this many candidate weighings (selection size x rows x layers x experts), the greedy weighs a sample
# of the remaining rows at each step instead of all of them: about 4 s of numpy on 2 cores.
EXACT_BUDGET = 2e9
# stochastic greedy's sample: rows/n x ln(1/epsilon) candidates per step, epsilon = 0.01
SAMPLE_FACTOR = math.log(100)


def mean_cv(counts: np.ndarray) -> np.ndarray:
    """Mean over layers of the coefficient of variation of expert load; `counts` is [..., layers, experts]."""
    counts = np.asarray(counts, dtype=np.float64)
    mean = counts.mean(axis=-1)
    cv = np.divide(counts.std(axis=-1), mean, out=np.zeros_like(mean), where=mean > 0)
    return cv.mean(axis=-1)


def even_subset(signatures: np.ndarray, n: int, budget: float = EXACT_BUDGET, seed: int = 0) -> list[int]:
    """Indices of `n` rows whose summed signatures ([rows, layers, experts] token slots) load the experts as
    evenly as this greedy finds: each step adds the candidate after which the mean per-layer CV is lowest
    (ties to the lower index). Every remaining row is a candidate while n x rows x layers x experts is within
    `budget`; beyond it each step weighs a random sample of rows/n x ln(100) remaining rows (stochastic greedy,
    Mirzasoleiman et al. 2015), about 4.6 x rows weighings in all instead of n x rows, with a fixed `seed`
    so a rerun selects the same rows.

    A candidate's CV comes from running sums (the load total, its squares, each row's dot product with it),
    not from materialising total + every candidate: memory stays at the signatures themselves."""
    signatures = np.asarray(signatures)
    rows = len(signatures)
    n = min(n, rows)
    if n == 0:
        return []
    experts = signatures.shape[-1]
    sums = signatures.sum(axis=-1, dtype=np.float64)  # [rows, layers]: each row's slots per layer
    squares = np.concatenate(  # [rows, layers], in blocks: float64 squares of every row at once double the memory
        [np.square(block, dtype=np.float64).sum(axis=-1) for block in np.array_split(signatures, rows // 4096 + 1)]
    )
    total = np.zeros(signatures.shape[1:], dtype=np.float64)
    left = np.ones(rows, dtype=bool)
    exact = n * signatures.size <= budget
    sample = math.ceil(rows / n * SAMPLE_FACTOR)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for _ in range(n):
        remaining = np.flatnonzero(left)
        candidates = remaining if exact or len(remaining) <= sample else np.sort(rng.choice(remaining, sample, False))
        weighed = signatures[candidates].astype(np.float64)[:, :, None, :]  # [candidates, layers, 1, experts]
        dots = np.matmul(weighed, total[:, :, None])[:, :, 0, 0]  # [candidates, layers]: each with the total
        mean = (total.sum(axis=-1) + sums[candidates]) / experts
        variance = (np.square(total).sum(axis=-1) + 2 * dots + squares[candidates]) / experts - np.square(mean)
        cv = np.divide(np.sqrt(np.maximum(variance, 0)), mean, out=np.zeros_like(mean), where=mean > 0)
        best = int(candidates[np.argmin(cv.mean(axis=-1))])
        chosen.append(best)
        left[best] = False
        total += signatures[best]
    return chosen
