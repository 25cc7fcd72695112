"""Expert capacity and replication from captured routing (experts/capacity.py), checked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from dataengine.experts.capacity import batches_of, capacity, dropped_share, replicas_needed, replication

# two rows of 4 answer tokens, one MoE layer of 2 experts, top-1: the first all to expert 0, the second 1 to 3
SIGNATURES = [np.array([[4, 0]]), np.array([[1, 3]])]
TOKENS = [4, 4]


def test_the_slots_past_each_experts_capacity_are_dropped_batch_by_batch():
    # one batch of 8 tokens: counts [5, 3], capacity ceil(1.0 * 8 * 1 / 2) = 4: 1 slot of 8 dropped
    assert dropped_share(SIGNATURES, TOKENS, 1, 1.0, 8).tolist() == [1 / 8]
    # batches of one row: [4, 0] past a capacity of 2 drops 2, [1, 3] drops 1: smaller batches drop more
    assert dropped_share(SIGNATURES, TOKENS, 1, 1.0, 4).tolist() == [3 / 8]
    # a larger factor leaves room: ceil(1.25 * 8 / 2) = 5
    assert dropped_share(SIGNATURES, TOKENS, 1, 1.25, 8).tolist() == [0.0]
    # top-2 over 2 experts: every token fills both, capacity ceil(8 * 2 / 2) = 8 each, nothing dropped
    assert dropped_share([np.array([[4, 4]]), np.array([[4, 4]])], TOKENS, 2, 1.0, 8).tolist() == [0.0]


def test_replication_copies_the_busiest_expert_until_no_copy_carries_much_more_than_the_mean():
    assert replicas_needed(np.array([1.0, 1.0, 1.0, 1.0])) == 0
    # [3, 1, 1, 1]: 3 > 1.1 x 6/4; one copy: 1.5 > 1.1 x 6/5; a second: every copy carries 1
    assert replicas_needed(np.array([3.0, 1.0, 1.0, 1.0])) == 2
    assert replicas_needed(np.array([3.0, 1.0, 1.0, 1.0]), tolerance=0.5) == 1
    assert replicas_needed(np.array([1.0, 0.0])) is None  # one expert takes everything: not with 8 copies
    assert replicas_needed(np.zeros(4)) == 0


def test_the_capacity_section_of_the_map():
    section = capacity(SIGNATURES, TOKENS, 1, factors=(1.0, 2.0), batch_tokens=4)
    assert section == {
        "batch_tokens": 4,
        "tokens": 8,
        "batches": 2,
        "dropped": {"1.0": [pytest.approx(3 / 8)], "2.0": [0.0]},
        "tolerance": 0.1,
        "replicas": [replicas_needed(np.array([5, 3]))],
    }
    assert capacity([], [], 1)["replicas"] == [] and capacity([], [], 1)["batches"] == 0
    assert "nothing to replicate" in replication(capacity([], [], 1))
    assert batches_of(section) == "8 answer tokens in 2 batches of at least 4 (whole rows; the last holds the rest)"
    assert replication({"replicas": [2, None, None], "tolerance": 0.1}) == (
        "an EPLB-style balancer could not keep every copy within 10% of the mean load in 2 of 3 layers even with "
        "4x as many extra copies as experts (first: layer 1): a few experts take most tokens"
    )
