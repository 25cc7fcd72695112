"""balance: of the kept rows, select those whose combined expert load is the most even (curate.balance),
from the routing signatures the route stage wrote. The rows left out are recorded with reason
`expert_balance`, like curation's rejected rows."""

from __future__ import annotations

import math
from pathlib import Path

from rich.console import Console

from dataengine import numbers
from dataengine.experts.select import even_subset, mean_cv
from dataengine.manifest import Manifest, fingerprint_files
from dataengine.recipe import Recipe
from dataengine.rows import CURATED_FEATURES, KEPT_FEATURES, read_matrices, read_rows, write_shards
from dataengine.stage import RunContext, Stage, StageResult

REASON = "expert_balance"
UNROUTED = "not_routed"


class BalanceStage(Stage):
    name = "balance"
    key_paths = ("curate.balance",)

    def __init__(self, recipe: Recipe, base_dir: Path, rows_from: str, routing_from: str) -> None:
        self.recipe = recipe
        self.cfg = recipe.curate.balance
        self.inputs = {"rows": rows_from, "routing": routing_from}
        self.outputs = {"kept": "balanced", "rejected": "balance_rejected"}

    def run(self, inputs: dict[str, Path], outputs: dict[str, Path], work_dir: Path, ctx: RunContext) -> StageResult:
        everything = read_rows(inputs["rows"])
        ids, all_signatures = read_matrices(inputs["routing"], "routing_signature")
        routed = {row_id: i for i, row_id in enumerate(ids)}
        # a row the route stage could not replay (longer than the teacher's context) has no load to weigh
        rows = [r for r in everything if r["id"] in routed]
        unrouted = [dict(r, drop_reason=UNROUTED, drop_step="balance") for r in everything if r["id"] not in routed]
        want = self.cfg.rows if self.cfg.rows is not None else math.ceil(self.cfg.fraction * len(everything))
        signatures = all_signatures[[routed[r["id"]] for r in rows]]
        chosen = set(even_subset(signatures, want)) if rows else set()
        kept = [r for i, r in enumerate(rows) if i in chosen]
        left_out = [dict(r, drop_reason=REASON, drop_step="balance") for i, r in enumerate(rows) if i not in chosen]
        paths = write_shards(kept, outputs["kept"], features=KEPT_FEATURES)
        write_shards(left_out + unrouted, outputs["rejected"], features=CURATED_FEATURES)
        before = float(mean_cv(signatures.sum(axis=0))) if len(rows) else None
        after = float(mean_cv(signatures[sorted(chosen)].sum(axis=0))) if chosen else None
        return StageResult(
            rows_in=len(everything),
            rows_out=len(kept),
            output_fingerprint=fingerprint_files(paths),
            drops={k: n for k, n in ((REASON, len(left_out)), (UNROUTED, len(unrouted))) if n},
            stats={"mean_cv_before": before, "mean_cv_after": after, "asked": want},
        )

    def summary(self, manifest: Manifest, outputs: dict[str, Path], console: Console) -> None:
        stats = manifest.stats
        console.print(
            f"balanced: kept {manifest.rows_out} of {manifest.rows_in} rows; mean per-layer CV of expert load "
            f"{numbers.metric(stats['mean_cv_before'])} -> {numbers.metric(stats['mean_cv_after'])} "
            f"(left-out rows: {outputs['rejected']})"
        )
