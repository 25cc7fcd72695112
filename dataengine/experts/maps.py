"""A run's routing map (routing/map.json): how the kept rows load each expert, overall and per slice, with
the balance metrics per layer, co-activation, top-1 consistency, and each language's divergence from a
reference language (over chat rows). Built a row at a time from the route stage's per-token choices."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from dataengine.experts import capacity, metrics

SLICES = ("language", "kind", "topic")


@dataclass(frozen=True)
class RoutedRow:
    id: str
    kind: str
    language: str
    topic: str
    kept: bool
    choices: np.ndarray  # [answer tokens, layers, top_k]


@dataclass(frozen=True)
class _Counted:
    """What the map keeps of a row once it is added: its slices, its signature and its length."""

    id: str
    kind: str
    language: str
    topic: str
    kept: bool
    signature: np.ndarray  # [layers, experts]
    tokens: int


class MapBuilder:
    """The map, built a row at a time: a row's per-token choices are summed into its signature, the kept rows'
    co-activation counts and top-1 consistency, and then let go, so a run of any size is mapped in the memory
    of its signatures."""

    def __init__(
        self,
        num_experts: int,
        top_k: int,
        cold_below: float,
        reference_language: str,
        capacity_factors: tuple[float, ...] = capacity.FACTORS,
        capacity_batch_tokens: int = capacity.BATCH_TOKENS,
    ) -> None:
        self.num_experts, self.top_k = num_experts, top_k
        self.cold_below, self.reference_language = cold_below, reference_language
        self.capacity_factors, self.capacity_batch_tokens = tuple(capacity_factors), capacity_batch_tokens
        self.rows: list[_Counted] = []
        self.layers: int | None = None  # of the first row with tokens: every row must have as many
        self.joint: np.ndarray | None = None  # [layers, experts, experts] over kept rows' tokens
        self.kept_tokens = 0
        self.consistency = metrics.Consistency(num_experts)

    def add(self, row: RoutedRow) -> np.ndarray:
        """Count one row in; returns its signature ([layers, experts] token slots)."""
        if row.choices.size:
            if self.layers is not None and row.choices.shape[1] != self.layers:
                raise ValueError(
                    f"row {row.id} is routed over {row.choices.shape[1]} MoE layers, earlier rows over {self.layers}"
                )
            self.layers = row.choices.shape[1]
        signature = metrics.signature(row.choices, self.num_experts)
        self.rows.append(_Counted(row.id, row.kind, row.language, row.topic, row.kept, signature, len(row.choices)))
        if row.kept and row.choices.size:
            joint = metrics.coactivation_counts(row.choices, self.num_experts)
            if self.joint is None:
                self.joint = joint
            else:
                self.joint += joint
            self.kept_tokens += len(row.choices)
            self.consistency.add(row.choices[:, :, 0])
        return signature

    def build(self) -> dict:
        """The map of the rows added (kept and rejected); everything but the kept-vs-rejected slice is over
        kept rows."""
        experts, cold_below = self.num_experts, self.cold_below
        layers = self.layers or 0
        kept = [r for r in self.rows if r.kept]

        def counts_of(group: list[_Counted]) -> np.ndarray:
            return sum((r.signature for r in group if r.tokens), np.zeros((layers, experts), np.int64))

        def summary(group: list[_Counted]) -> dict:
            counts = counts_of(group)
            return {
                "rows": len(group),
                "tokens": int(sum(r.tokens for r in group)),
                "load": np.round(metrics.load(counts), 4).tolist(),
                **metrics.balance(counts, cold_below),
            }

        slices: dict[str, dict[str, dict]] = {}
        for field in SLICES:
            groups: dict[str, list[_Counted]] = defaultdict(list)
            for r in kept:
                groups[getattr(r, field) or "(none)"].append(r)
            slices[field] = {name: summary(group) for name, group in sorted(groups.items())}
        rejected = [r for r in self.rows if not r.kept]
        slices["kept"] = {"kept": summary(kept)} | ({"rejected": summary(rejected)} if rejected else {})
        # languages compared on chat rows only: code rows carry the language they were asked in (en by
        # default), and mixing them in would measure the share of code, not the language
        chat = [r for r in kept if r.kind == "chat"]
        by_language = {
            name: counts_of(group) for name in slices["language"] if (group := [r for r in chat if r.language == name])
        }
        reference = by_language.get(self.reference_language)
        drawn = sorted(kept, key=lambda r: r.id)  # batches drawn as a shuffle would: in id order
        joint = self.joint if self.joint is not None else np.zeros((layers, experts, experts))
        return {
            "num_layers": layers,
            "num_experts": experts,
            "top_k": self.top_k,
            "cold_below": cold_below,
            "overall": summary(kept),
            "slices": slices,
            "coactivation_pmi": _finite(metrics.pmi(joint, self.kept_tokens)),
            "consistency": self.consistency.result(),
            "capacity": capacity.capacity(
                [r.signature for r in drawn],
                [r.tokens for r in drawn],
                self.top_k,
                self.capacity_factors,
                self.capacity_batch_tokens,
            ),
            "divergence_from": self.reference_language if reference is not None else None,
            "js_divergence": {
                name: np.round(metrics.js_divergence(counts, reference), 4).tolist()
                for name, counts in by_language.items()
                if reference is not None and name != self.reference_language
            },
        }


def build(rows: list[RoutedRow], num_experts: int, top_k: int, cold_below: float, reference_language: str) -> dict:
    """The map of `rows` given at once."""
    builder = MapBuilder(num_experts, top_k, cold_below, reference_language)
    for row in rows:
        builder.add(row)
    return builder.build()


def _finite(values: np.ndarray) -> list:
    """JSON has no -inf: a pair that never co-occurs is null."""
    return [[[None if not math.isfinite(v) else round(float(v), 4) for v in row] for row in m] for m in values]
