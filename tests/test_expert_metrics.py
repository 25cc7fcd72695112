"""Routing metrics against hand computations on a small routing tensor (2 layers, 4 experts, top-2)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dataengine.experts import metrics

# [tokens, layers, top_k]: layer 0 routes t0 {0,1}, t1 {0,1}, t2 {2,3}, t3 {0,2}; layer 1 always picks 1 first
CHOICES = np.array(
    [
        [[0, 1], [1, 0]],
        [[0, 1], [1, 2]],
        [[2, 3], [1, 3]],
        [[0, 2], [1, 0]],
    ]
)


def _pmi(choices: np.ndarray) -> np.ndarray:
    """Co-activation PMI of 4 experts over the tokens of `choices`, as the map computes it."""
    return metrics.pmi(metrics.coactivation_counts(choices, 4), len(choices))


def _consistency(rows: list[np.ndarray]) -> dict:
    """Top-1 consistency of 4 experts over `rows`, added one at a time as the map adds them."""
    counted = metrics.Consistency(4)
    for top1 in rows:
        counted.add(top1)
    return counted.result()


def test_signature_and_load_normalised_to_uniform():
    counts = metrics.signature(CHOICES, 4)
    assert counts.tolist() == [[3, 2, 2, 1], [2, 4, 1, 1]]
    # 8 slots per layer, 2 per expert when uniform
    assert metrics.load(counts).tolist() == [[1.5, 1.0, 1.0, 0.5], [1.0, 2.0, 0.5, 0.5]]


def test_balance_per_layer():
    out = metrics.balance(metrics.signature(CHOICES, 4), cold_below=0.75)
    assert out["cv"][0] == pytest.approx(math.sqrt(0.5) / 2)  # std of [3,2,2,1] over its mean
    assert out["max_over_mean"] == pytest.approx([1.5, 2.0])
    assert out["balancedness"] == pytest.approx([2 / 3, 0.5])
    # sum over ordered pairs |x_i - x_j| = 12 for [3,2,2,1]; / (2 n^2 mean) = 12 / 64
    assert out["gini"][0] == pytest.approx(0.1875)
    assert out["cold"] == [[3], [2, 3]]


def test_coactivation_counts_every_pair_of_a_tokens_experts():
    pmi = _pmi(CHOICES)[0]
    assert pmi[0, 1] == pytest.approx(math.log(0.5 / (0.75 * 0.5)))
    assert pmi[2, 3] == pytest.approx(math.log(2.0))
    assert pmi[0, 2] == pytest.approx(math.log(2 / 3))  # only t3 routes to both
    assert pmi[1, 0] == pmi[0, 1] and pmi[0, 3] == -math.inf and pmi[0, 0] == 0.0


def test_coactivation_over_all_pairs_of_a_top3_routing():
    # top-3: (0, 2) are ranks 1 and 3, which an adjacent-ranks count would miss
    choices = np.array([[[0, 1, 2]], [[0, 3, 2]], [[1, 3, 0]]])
    pmi = _pmi(choices)[0]
    assert pmi[0, 2] == pytest.approx(math.log((2 / 3) / (1.0 * 2 / 3)))
    assert pmi[1, 2] == pytest.approx(math.log((1 / 3) / ((2 / 3) * (2 / 3))))


def test_consistency_and_its_random_baseline():
    out = _consistency([CHOICES[:, :, 0]])
    assert out["same_top1"] == pytest.approx([1 / 3, 1.0])  # layer 0 top-1: 0 0 2 0
    assert out["random_baseline"] == pytest.approx([(3 / 4) ** 2 + (1 / 4) ** 2, 1.0])
    # rows are not chained: the last token of one and the first of the next are not a pair
    split = _consistency([CHOICES[:2, :, 0], CHOICES[2:, :, 0]])
    assert split["same_top1"] == pytest.approx([0.5, 1.0])


def test_js_divergence_base_2():
    assert metrics.js_divergence(np.array([[4, 0]]), np.array([[0, 9]])) == pytest.approx([1.0])
    assert metrics.js_divergence(np.array([[1, 1]]), np.array([[5, 5]])) == pytest.approx([0.0])
    expected = (0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25) + math.log2(1 / 0.75)) / 2
    assert metrics.js_divergence(np.array([[1, 1]]), np.array([[3, 0]])) == pytest.approx([expected])


def test_router_entropy_and_margin():
    probs = np.array([[[0.5, 0.25, 0.25, 0.0]], [[1.0, 0.0, 0.0, 0.0]]])
    entropy, margin = metrics.entropy_and_margin(probs)
    assert entropy == pytest.approx((-(0.5 * math.log(0.5) + 0.5 * math.log(0.25)) + 0.0) / 2)
    assert margin == pytest.approx((0.25 + 1.0) / 2)


def test_greedy_even_subset_picks_the_most_even_row_then_evens_out():
    from dataengine.experts.select import even_subset, mean_cv

    # one layer, two experts: A and C load expert 0, B expert 1, D both
    signatures = np.array([[[4, 0]], [[0, 4]], [[4, 0]], [[2, 2]]])
    assert even_subset(signatures, 1) == [3]
    assert even_subset(signatures, 3) == [3, 0, 1]  # D; then A (a tie with B and C, lowest index); then B
    assert mean_cv(signatures[[3, 0, 1]].sum(axis=0)) == pytest.approx(0.0)
    assert even_subset(signatures, 9) == [3, 0, 1, 2]  # asking for more than there is takes them all


def test_selection_lowers_the_load_imbalance_of_skewed_rows():
    from dataengine.experts.select import even_subset, mean_cv

    rng = np.random.default_rng(0)
    skewed = rng.multinomial(40, [0.7, 0.1, 0.1, 0.1], size=(30, 3))  # 30 rows, 3 layers, expert 0 hot
    even = rng.multinomial(40, [0.25] * 4, size=(10, 3))
    signatures = np.concatenate([skewed, even])
    chosen = even_subset(signatures, 15)
    assert mean_cv(signatures[chosen].sum(axis=0)) < 0.5 * mean_cv(signatures.sum(axis=0))


def _naive_even_subset(signatures: np.ndarray, n: int) -> list[int]:
    """The greedy written the obvious way: total + every remaining row, CV of each."""
    from dataengine.experts.select import mean_cv

    left, total, chosen = list(range(len(signatures))), np.zeros(signatures.shape[1:]), []
    for _ in range(n):
        best = min(left, key=lambda i: (mean_cv(total + signatures[i]), i))
        chosen.append(best)
        left.remove(best)
        total = total + signatures[best]
    return chosen


def test_the_running_sums_choose_what_the_obvious_greedy_chooses():
    from dataengine.experts.select import even_subset

    rng = np.random.default_rng(1)
    signatures = rng.multinomial(30, [0.4, 0.3, 0.2, 0.05, 0.05], size=(40, 3))
    assert even_subset(signatures, 25) == _naive_even_subset(signatures, 25)


def test_a_large_selection_weighs_samples_and_still_evens_out():
    from dataengine.experts.select import even_subset, mean_cv

    rng = np.random.default_rng(0)
    skewed = rng.multinomial(40, [0.7, 0.1, 0.1, 0.1], size=(300, 3))
    even = rng.multinomial(40, [0.25] * 4, size=(100, 3))
    signatures = np.concatenate([skewed, even])
    exact = even_subset(signatures, 100)
    sampled = even_subset(signatures, 100, budget=0)  # every step weighs ceil(400/100 x ln 100) = 19 rows
    assert sampled != exact and sampled == even_subset(signatures, 100, budget=0)  # seeded: a rerun agrees
    before, after = mean_cv(signatures.sum(axis=0)), mean_cv(signatures[sampled].sum(axis=0))
    # measured: all 400 rows 0.78, the exact greedy's 100 rows 0.025, the sampled greedy's 0.080
    assert after < 0.15 * before and mean_cv(signatures[exact].sum(axis=0)) < after
    assert sorted(even_subset(signatures[:30], 30, budget=0)) == list(range(30))  # all of them: every row


def test_the_map_refuses_rows_routed_over_different_layers():
    from dataengine.experts.maps import RoutedRow, build

    rows = [RoutedRow(f"r{n}", "chat", "en", "t", True, np.zeros((2, n, 2), dtype=np.int16)) for n in (3, 4)]
    with pytest.raises(ValueError, match="row r4 is routed over 4 MoE layers, earlier rows over 3"):
        build(rows, 4, 2, 0.25, "en")
