"""What is drawn from row ids alone: the held-out split (`held_out_ids`, over Python or arrow ids) and the
keys that name a set of rows (`batch_key`, `ids_key`)."""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc


def batch_key(parts: Iterable[str]) -> str:
    """The name of a saved batch (its row ids, and anything else its result depends on): what a resumed stage
    looks for to skip the batch. The parts, joined by newlines, are hashed as they come: never held at once."""
    digest = hashlib.sha256()
    for i, part in enumerate(parts):
        digest.update((("\n" if i else "") + part).encode())
    return digest.hexdigest()[:16]


def ids_key(ids: pa.Array) -> str:
    """`batch_key(sorted(ids))` of ids in arrow (arrow sorts strings by their UTF-8 bytes, which is Python's code
    point order)."""
    return batch_key(_strings(pc.take(ids, pc.sort_indices(ids))))


def _strings(ids: pa.Array | pa.ChunkedArray, size: int = 65_536) -> Iterator[str]:
    """Arrow strings one at a time, made into Python objects a slice of `size` at a time."""
    for start in range(0, len(ids), size):
        yield from ids.slice(start, size).to_pylist()


def held_out_ids(ids: list[str] | pa.Array, eval_fraction: float, min_rows: int = 1) -> set[str]:
    """The held-out rows' ids: those that hash lowest, `eval_fraction` of them, raised to `min_rows` as far as that
    leaves training half the rows, and at least one of each from two rows. It depends only on the ids, so every
    stage draws the same split. `ids` in arrow are read a slice at a time."""
    n_eval = max(math.ceil(len(ids) * eval_fraction), min(min_rows, len(ids) // 2))
    n_eval = min(max(1, n_eval), len(ids) - 1) if len(ids) > 1 else 0
    every = _strings(ids) if isinstance(ids, pa.Array | pa.ChunkedArray) else ids
    # the n lowest, not a sort of every hash: a million ids' digests are not held at once (a digest's bytes sort
    # as its hex does)
    return set(heapq.nsmallest(n_eval, every, key=lambda i: hashlib.sha256(i.encode()).digest()))
