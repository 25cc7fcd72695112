"""Routing metrics, in float64 numpy, from what the route stage records per token: the experts chosen at
every layer (`choices`, [tokens, layers, top_k] expert ids) and, per row, the signature (a layers x experts
count of routed token slots).

Loads are shares of a layer's routed token slots, normalised so that uniform is 1.0: each token fills
top_k slots, so under uniform routing each of the E experts gets 1/E of them (k/E of the tokens).
"""

from __future__ import annotations

import numpy as np

EPS = 1e-12


def signature(choices: np.ndarray, num_experts: int) -> np.ndarray:
    """[layers, experts] count of token slots routed to each expert, from [tokens, layers, top_k] ids."""
    tokens, layers, _ = choices.shape
    counts = np.zeros((layers, num_experts), dtype=np.int64)
    for layer in range(layers):
        counts[layer] = np.bincount(choices[:, layer, :].ravel(), minlength=num_experts)[:num_experts]
    return counts


def load(counts: np.ndarray) -> np.ndarray:
    """[layers, experts] load, 1.0 = uniform (the share of the layer's slots times the number of experts)."""
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(axis=-1, keepdims=True)
    return np.divide(counts * counts.shape[-1], totals, out=np.zeros_like(counts), where=totals > 0)


def balance(counts: np.ndarray, cold_below: float = 0.25) -> dict[str, list]:
    """Per layer: coefficient of variation, max/mean (MaxVio + 1), balancedness (mean/max, what vLLM's
    expert-parallel load balancer logs), Gini, and the cold experts (load below `cold_below` of uniform)."""
    x = np.asarray(counts, dtype=np.float64)
    mean = x.mean(axis=-1)
    peak = x.max(axis=-1)
    cv = np.divide(x.std(axis=-1), mean, out=np.zeros_like(mean), where=mean > 0)
    n = x.shape[-1]
    pairwise = np.abs(x[..., :, None] - x[..., None, :]).sum(axis=(-1, -2))
    gini = np.divide(pairwise, 2 * n * n * mean, out=np.zeros_like(mean), where=mean > 0)
    shares = load(x)
    return {
        "cv": cv.tolist(),
        "max_over_mean": np.divide(peak, mean, out=np.zeros_like(mean), where=mean > 0).tolist(),
        "balancedness": np.divide(mean, peak, out=np.zeros_like(mean), where=peak > 0).tolist(),
        "gini": gini.tolist(),
        "cold": [np.flatnonzero(row < cold_below).tolist() for row in shares],
    }


def coactivation_counts(choices: np.ndarray, num_experts: int) -> np.ndarray:
    """[layers, experts, experts] tokens that chose both experts, over every pair of the token's top-k (not only
    adjacent ranks); the diagonal counts the tokens that chose each expert. Sums over rows. Counted by one
    bincount over every (layer, a, b) of every token: k^2 per token and layer, where a one-hot matmul would
    cost experts^2 (128 experts, top-8: 64 against 16,384)."""
    _, layers, _ = choices.shape
    ids = choices.astype(np.int64)
    first = ids * num_experts + (np.arange(layers) * num_experts * num_experts)[None, :, None]
    cells = first[:, :, :, None] + ids[:, :, None, :]  # [tokens, layers, k, k]
    counts = np.bincount(cells.ravel(), minlength=layers * num_experts * num_experts)
    return counts.reshape(layers, num_experts, num_experts)


def pmi(joint: np.ndarray, tokens: int) -> np.ndarray:
    """Pointwise mutual information log p(a, b) / (p(a) p(b)) from `coactivation_counts` over `tokens` tokens.
    -inf where a pair never co-occurs; the diagonal is 0 (an expert is not paired with itself)."""
    joint = np.asarray(joint, dtype=np.float64)
    if tokens == 0:
        return np.zeros_like(joint)
    single = np.diagonal(joint, axis1=1, axis2=2) / tokens
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log(joint / tokens) - np.log(single[:, :, None] * single[:, None, :])
    for layer in out:
        np.fill_diagonal(layer, 0.0)
    return out


class Consistency:
    """Per layer, the share of consecutive tokens (within a row) whose top-1 expert is the same, and the share
    two tokens drawn independently from the same top-1 distribution would agree (the random baseline: sum of
    squared top-1 shares; 1/E when uniform). Rows are added one at a time."""

    def __init__(self, num_experts: int) -> None:
        self.num_experts = num_experts
        self.same: np.ndarray | None = None  # [layers] consecutive pairs with the same top-1
        self.pairs = 0
        self.first: np.ndarray | None = None  # [layers, experts] top-1 counts

    def add(self, top1: np.ndarray) -> None:
        """One row's [tokens, layers] top-1 experts."""
        if top1.size == 0:
            return
        if self.same is None:
            self.same, self.first = np.zeros(top1.shape[1]), np.zeros((top1.shape[1], self.num_experts))
        self.same += (top1[1:] == top1[:-1]).sum(axis=0)
        self.pairs += len(top1) - 1
        for layer in range(top1.shape[1]):
            self.first[layer] += np.bincount(top1[:, layer], minlength=self.num_experts)[: self.num_experts]

    def result(self) -> dict[str, list[float]]:
        if self.same is None:
            return {"same_top1": [], "random_baseline": []}
        shares = self.first / np.maximum(self.first.sum(axis=1, keepdims=True), EPS)
        return {
            "same_top1": (self.same / self.pairs if self.pairs else np.zeros(len(self.same))).tolist(),
            "random_baseline": (shares**2).sum(axis=1).tolist(),
        }


def js_divergence(p_counts: np.ndarray, q_counts: np.ndarray) -> list[float]:
    """Per layer, the Jensen-Shannon divergence (base 2, so within [0, 1]) between two routings' expert
    distributions."""
    p = np.asarray(p_counts, dtype=np.float64)
    q = np.asarray(q_counts, dtype=np.float64)
    p = p / np.maximum(p.sum(axis=-1, keepdims=True), EPS)
    q = q / np.maximum(q.sum(axis=-1, keepdims=True), EPS)
    m = (p + q) / 2

    def kl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(a > 0, a * np.log2(a / b), 0.0)
        return terms.sum(axis=-1)

    return ((kl(p, m) + kl(q, m)) / 2).tolist()


def entropy_and_margin(probs: np.ndarray) -> tuple[float, float]:
    """Mean router entropy (nats) and mean top-1 margin (top-1 minus top-2 probability) over a row's tokens
    and layers, from the router's softmax probabilities [tokens, layers, experts]."""
    if probs.size == 0:
        return 0.0, 0.0
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=-1)
    top2 = np.sort(p, axis=-1)[..., -2:]
    return float(entropy.mean()), float((top2[..., 1] - top2[..., 0]).mean())
