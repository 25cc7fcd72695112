"""balance: of the kept rows, select those whose combined expert load is the most even (curate.balance),
from the routing signatures the route stage wrote. The rows left out are recorded with reason
`expert_balance`, like curation's rejected rows."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from rich.console import Console

from dataengine import numbers
from dataengine.experts.select import even_subset, mean_cv
from dataengine.manifest import Manifest, fingerprint_files
from dataengine.recipe import Recipe
from dataengine.rows import CURATED_FEATURES, KEPT_FEATURES, iter_rows, read_ids, read_matrices, stage_writer
from dataengine.stage import RunContext, Stage, StageResult

REASON = "expert_balance"
UNROUTED = "not_routed"


class BalanceStage(Stage):
    name = "balance"
    reads = ("curate.balance",)

    def __init__(self, recipe: Recipe, base_dir: Path, rows_from: str, routing_from: str) -> None:
        self.recipe = recipe
        self.cfg = recipe.curate.balance
        self.inputs = {"rows": rows_from, "routing": routing_from}
        self.outputs = {"kept": "balanced", "rejected": "balance_rejected"}

    def run(self, inputs: dict[str, Path], outputs: dict[str, Path], work_dir: Path, ctx: RunContext) -> StageResult:
        row_ids = read_ids(inputs["rows"]).to_pylist()
        ids, all_signatures = read_matrices(inputs["routing"], "routing_signature")
        routed = {row_id: i for i, row_id in enumerate(ids)}
        # a row the route stage could not replay (longer than the teacher's context) has no load to weigh
        weighed = [pos for pos, row_id in enumerate(row_ids) if row_id in routed]  # positions in the input
        want = self.cfg.rows if self.cfg.rows is not None else math.ceil(self.cfg.fraction * len(row_ids))
        signatures = all_signatures[[routed[row_ids[pos]] for pos in weighed]]
        chosen = set(even_subset(signatures, want)) if weighed else set()
        kept_at = {weighed[i] for i in chosen}
        drops = Counter()
        # the rows themselves pass a batch at a time, from the input's shards to the kept or the rejected ones
        with (
            stage_writer(outputs["kept"], KEPT_FEATURES) as kept,
            stage_writer(outputs["rejected"], CURATED_FEATURES) as rejected,
        ):
            for pos, row in enumerate(iter_rows(inputs["rows"])):
                if pos in kept_at:
                    kept.write(row)
                    continue
                reason = REASON if row["id"] in routed else UNROUTED
                drops[reason] += 1
                rejected.write(dict(row, drop_reason=reason, drop_step="balance"))
        paths = kept.paths
        before = float(mean_cv(signatures.sum(axis=0))) if weighed else None
        after = float(mean_cv(signatures[sorted(chosen)].sum(axis=0))) if chosen else None
        return StageResult(
            rows_in=len(row_ids),
            rows_out=kept.rows,
            output_fingerprint=fingerprint_files(paths),
            drops={reason: drops[reason] for reason in (REASON, UNROUTED) if drops[reason]},
            stats={"mean_cv_before": before, "mean_cv_after": after, "asked": want},
        )

    def summary(self, manifest: Manifest, outputs: dict[str, Path], console: Console) -> None:
        stats = manifest.stats
        console.print(
            f"balanced: kept {manifest.rows_out} of {manifest.rows_in} rows; mean per-layer CV of expert load "
            f"{numbers.metric(stats['mean_cv_before'])} -> {numbers.metric(stats['mean_cv_after'])} "
            f"(left-out rows: {outputs['rejected']})"
        )
