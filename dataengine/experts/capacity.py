"""Whether the data would overload an expert, as the serving and training stacks see it: from the routing the
run captured, the token slots each layer would drop at an expert capacity factor, and how many experts an
EPLB-style balancer would replicate.

Capacity (Switch Transformer, GShard; Megatron's and DeepSpeed's MoE layers): in a batch of T tokens each
expert takes at most ceil(factor * T * top_k / E) token slots; the slots past that are dropped (training) or
overflow to a slower path (serving). Batches here are the kept rows in id order (a shuffle, as a data loader
would draw them) grouped until they hold `batch_tokens` answer tokens, the tokens the route stage records; a
row is never split. The share dropped is over every slot of every batch.

Replication (DeepSeek's EPLB, vLLM's expert-parallel load balancer): an overloaded expert is copied onto more
GPUs and its tokens split between the copies. `replicas_needed` adds copies one at a time to the expert whose
copies carry the most, until no copy carries more than (1 + tolerance) times the mean over all copies.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

FACTORS = (1.0, 1.25, 2.0)
BATCH_TOKENS = 4096
TOLERANCE = 0.1


def batches(signatures: Sequence[np.ndarray], tokens: Sequence[int], batch_tokens: int) -> Iterator[tuple]:
    """(slot counts [layers, experts], answer tokens) of consecutive rows summed until they hold at least
    `batch_tokens` tokens; the last batch holds what is left."""
    counts, held = None, 0
    for signature, n in zip(signatures, tokens, strict=True):
        if not n:
            continue
        counts = signature.astype(np.int64) if counts is None else counts + signature
        held += n
        if held >= batch_tokens:
            yield counts, held
            counts, held = None, 0
    if counts is not None:
        yield counts, held


def dropped_share(
    signatures: Sequence[np.ndarray], tokens: Sequence[int], top_k: int, factor: float, batch_tokens: int
) -> np.ndarray:
    """[layers] share of the token slots past their expert's capacity, over every batch."""
    dropped = slots = None
    for counts, held in batches(signatures, tokens, batch_tokens):
        experts = counts.shape[-1]
        capacity = math.ceil(factor * held * top_k / experts)
        over = np.maximum(counts - capacity, 0).sum(axis=-1)
        dropped = over if dropped is None else dropped + over
        slots = held * top_k + (0 if slots is None else slots)
    if dropped is None:
        return np.zeros(0)
    return dropped / slots


def replicas_needed(load: np.ndarray, tolerance: float = TOLERANCE) -> int | None:
    """Extra copies an EPLB-style balancer adds to one layer's experts (`load`, any scale) until the busiest
    copy carries at most (1 + tolerance) x the mean over all copies; None when 4x as many extra copies as
    there are experts are not enough, as when a few experts take nearly everything."""
    load = np.asarray(load, dtype=np.float64)
    if load.sum() <= 0:
        return 0
    copies = np.ones(len(load))
    for extra in range(4 * len(load) + 1):
        per_copy = load / copies
        if per_copy.max() <= (1 + tolerance) * load.sum() / copies.sum():
            return extra
        copies[per_copy.argmax()] += 1
    return None


def capacity(
    signatures: Sequence[np.ndarray],
    tokens: Sequence[int],
    top_k: int,
    factors: Sequence[float] = FACTORS,
    batch_tokens: int = BATCH_TOKENS,
    tolerance: float = TOLERANCE,
) -> dict:
    """The capacity section of the routing map: per factor the share dropped per layer, and per layer the
    replicas an EPLB-style balancer would add, over rows given in the order batches draw them."""
    routed = [s for s, n in zip(signatures, tokens, strict=True) if n]
    total = np.sum(routed, axis=0) if routed else np.zeros((0, 0))
    return {
        "batch_tokens": batch_tokens,
        "tokens": int(sum(tokens)),
        "batches": sum(1 for _ in batches(signatures, tokens, batch_tokens)),
        "dropped": {
            str(f): np.round(dropped_share(signatures, tokens, top_k, f, batch_tokens), 6).tolist() for f in factors
        },
        "tolerance": tolerance,
        "replicas": [replicas_needed(layer, tolerance) for layer in total],
    }


def summary(section: dict) -> list[dict]:
    """Per capacity factor: the mean share dropped over layers, and the layer that drops most with its share."""
    out = []
    for factor, shares in section["dropped"].items():
        worst = max(range(len(shares)), key=shares.__getitem__) if shares else None
        out.append(
            {
                "factor": float(factor),
                "mean": sum(shares) / len(shares) if shares else 0.0,
                "worst_layer": "-" if worst is None else str(worst),
                "worst": shares[worst] if worst is not None else 0.0,
            }
        )
    return out


def batches_of(section: dict) -> str:
    """How the tokens were batched, in words: "12,000 answer tokens in 3 batches of at least 4096 (...)"."""
    n, size = section["batches"], section["batch_tokens"]
    if n <= 1:
        return f"{section['tokens']:,} answer tokens in one batch (fewer than {size})"
    return (
        f"{section['tokens']:,} answer tokens in {n} batches of at least {size} (whole rows; the last holds the rest)"
    )


def replication(section: dict) -> str:
    """One sentence on what an EPLB-style balancer would replicate."""
    replicas = section["replicas"]
    if not replicas:
        return "no routed tokens: nothing to replicate"
    within = f"within {section['tolerance']:.0%} of the mean load"
    unbalanced = [layer for layer, n in enumerate(replicas) if n is None]
    if unbalanced:
        return (
            f"an EPLB-style balancer could not keep every copy {within} in {len(unbalanced)} of {len(replicas)} "
            f"layers even with 4x as many extra copies as experts (first: layer {unbalanced[0]}): a few experts take "
            "most tokens"
        )
    busiest = max(range(len(replicas)), key=replicas.__getitem__)
    return (
        f"an EPLB-style balancer would add {sum(replicas)} expert copies over {len(replicas)} layers to keep every "
        f"copy {within} (most in layer {busiest}: {replicas[busiest]})"
    )
