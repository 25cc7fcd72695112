"""A run's routing map (routing/map.json): how the kept rows load each expert, overall and per slice, with
the balance metrics per layer, co-activation, top-1 consistency, and each language's divergence from a
reference language (over chat rows). Built from the route stage's per-row signatures and per-token choices."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from dataengine.experts import metrics

SLICES = ("language", "kind", "topic")


@dataclass(frozen=True)
class RoutedRow:
    id: str
    kind: str
    language: str
    topic: str
    kept: bool
    choices: np.ndarray  # [answer tokens, layers, top_k]


def build(rows: list[RoutedRow], num_experts: int, top_k: int, cold_below: float, reference_language: str) -> dict:
    """The map of `rows` (kept and rejected); everything but the kept-vs-rejected slice is over kept rows."""
    kept = [r for r in rows if r.kept]
    layers = next((r.choices.shape[1] for r in rows if r.choices.size), 0)

    # each row's signature once; every slice sums them
    signatures = {r.id: metrics.signature(r.choices, num_experts) for r in rows if r.choices.size}

    def counts_of(group: list[RoutedRow]) -> np.ndarray:
        return sum((signatures[r.id] for r in group if r.id in signatures), np.zeros((layers, num_experts), np.int64))

    def summary(group: list[RoutedRow]) -> dict:
        counts = counts_of(group)
        return {
            "rows": len(group),
            "tokens": int(sum(len(r.choices) for r in group)),
            "load": np.round(metrics.load(counts), 4).tolist(),
            **metrics.balance(counts, cold_below),
        }

    slices: dict[str, dict[str, dict]] = {}
    for field in SLICES:
        groups: dict[str, list[RoutedRow]] = defaultdict(list)
        for r in kept:
            groups[getattr(r, field) or "(none)"].append(r)
        slices[field] = {name: summary(group) for name, group in sorted(groups.items())}
    rejected = [r for r in rows if not r.kept]
    slices["kept"] = {"kept": summary(kept)} | ({"rejected": summary(rejected)} if rejected else {})
    tokens = [r.choices for r in kept if r.choices.size]
    all_tokens = np.concatenate(tokens) if tokens else np.zeros((0, layers, top_k), dtype=np.int16)
    # languages compared on chat rows only: code rows carry the language they were asked in (en by default),
    # and mixing them in would measure the share of code, not the language
    chat = [r for r in kept if r.kind == "chat"]
    by_language = {
        name: counts_of(group) for name in slices["language"] if (group := [r for r in chat if r.language == name])
    }
    reference = by_language.get(reference_language)
    return {
        "num_layers": layers,
        "num_experts": num_experts,
        "top_k": top_k,
        "cold_below": cold_below,
        "overall": summary(kept),
        "slices": slices,
        "coactivation_pmi": _finite(metrics.coactivation_pmi(all_tokens, num_experts)),
        "consistency": metrics.consistency([r.choices[:, :, 0] for r in kept if r.choices.size], num_experts),
        "divergence_from": reference_language if reference is not None else None,
        "js_divergence": {
            name: np.round(metrics.js_divergence(counts, reference), 4).tolist()
            for name, counts in by_language.items()
            if reference is not None and name != reference_language
        },
    }


def _finite(values: np.ndarray) -> list:
    """JSON has no -inf: a pair that never co-occurs is null."""
    return [[[None if not math.isfinite(v) else round(float(v), 4) for v in row] for row in m] for m in values]
