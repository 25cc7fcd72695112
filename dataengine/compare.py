"""Runs side by side (`dataengine rows RUN --against OTHER`, or the last N scheduled runs of a recipe): kept rows
per group, drop reasons, answer lengths and how far the teacher's expert load drifted from the first run.

Every figure is a run's facts (`facts.collect`, polars over its shards), so the comparison says what each run's
report says.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from dataengine import numbers
from dataengine.errors import UserError
from dataengine.experts.metrics import js_divergence
from dataengine.facts import RunFacts, collect
from dataengine.run_folder import RunFolder

SCHEDULED = "scheduled"  # runs/<name>/scheduled/<UTC stamp>/: where `dataengine schedule` puts each run


def runs(first: Path, against: list[Path], last: int | None) -> list[Path]:
    """The run folders to compare, oldest first: `first` and `against`, or the `last` scheduled runs in `first`
    (a recipe's home folder, runs/<name>)."""
    if last is not None:
        if against:
            raise UserError("--last takes the scheduled runs of one recipe: give its folder alone, without --against")
        stamps = sorted(p for p in (first / SCHEDULED).glob("*") if RunFolder(p).exists)
        if len(stamps) < 2:
            raise UserError(
                f"{first / SCHEDULED} holds {len(stamps)} scheduled run(s); --last compares at least 2 "
                "(`dataengine schedule once RECIPE` makes one)"
            )
        return stamps[-last:]
    for path in [first, *against]:
        if not RunFolder(path).exists:
            raise UserError(f"{path} is not a run folder (no run.json); runs are under runs/<name>")
    return [first, *against]


def show(folders: list[Path], console: Console) -> None:
    """The comparison tables, a column per run."""
    facts = [collect(folder) for folder in folders]
    labels = _labels(folders)
    console.print(
        "runs: " + "; ".join(f"{label} = {f.run_dir} ({f.run_id})" for label, f in zip(labels, facts, strict=True))
    )
    console.print(_kept(facts, labels))
    console.print(_drops(facts, labels))
    console.print(_lengths(facts, labels))
    if any(f.routing for f in facts):
        console.print(_drift(facts, labels))


def _labels(folders: list[Path]) -> list[str]:
    """Short column names: the folder's name, unless two runs share it."""
    names = [folder.name for folder in folders]
    return names if len(set(names)) == len(names) else [f"run {i + 1}" for i in range(len(folders))]


def _table(title: str, first: str, labels: list[str]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column(first)
    for label in labels:
        table.add_column(label, justify="right")
    return table


def _kept(facts: list[RunFacts], labels: list[str]) -> Table:
    """Kept rows per kind/language group, of those generated (or ingested)."""
    table = _table("kept rows per group (of those generated, where the run generated)", "group", labels)
    for group in sorted({g for f in facts for g in f.funnel}):
        cells = []
        for f in facts:
            steps = f.funnel.get(group, {})
            cells.append(
                f"{steps.get('kept', 0)} of {steps['generated']}" if "generated" in steps else str(steps.get("kept", 0))
            )
        table.add_row(group, *cells)
    return table


def _drops(facts: list[RunFacts], labels: list[str]) -> Table:
    table = _table("why rows were dropped", "reason", labels)
    reasons = sorted({r for f in facts for r in f.drops}, key=lambda r: -sum(f.drops.get(r, 0) for f in facts))
    for reason in reasons:
        table.add_row(reason, *(str(f.drops.get(reason, 0)) for f in facts))
    return table


def _lengths(facts: list[RunFacts], labels: list[str]) -> Table:
    """The kept answers' length in characters: median and 90th percentile."""
    table = _table("kept answers' length (characters)", "", labels)
    kept = [f.answer_chars.get("kept", np.zeros(0)) for f in facts]
    table.add_row("rows", *(str(len(k)) for k in kept))
    for name, q in (("median", 50), ("90th percentile", 90)):
        table.add_row(name, *(numbers.metric(float(np.percentile(k, q))) if len(k) else numbers.NO_VALUE for k in kept))
    return table


def _drift(facts: list[RunFacts], labels: list[str]) -> Table:
    """How far each run's expert load moved from the first routed run's: the JS divergence per MoE layer (base 2,
    0 = the same load), its mean and its largest layer."""
    table = _table("expert load drift from the first routed run (JS divergence over layers)", "", labels)
    loads = [np.array(f.routing["overall"]["load"]) if f.routing else None for f in facts]
    reference = next(load for load in loads if load is not None)
    rows = {"mean over layers": [], "largest layer": []}
    for load in loads:
        if load is None or load.shape != reference.shape:
            rows["mean over layers"].append(numbers.NO_VALUE)
            rows["largest layer"].append(numbers.NO_VALUE)
            continue
        per_layer = js_divergence(load, reference)
        rows["mean over layers"].append(numbers.metric(float(np.mean(per_layer))))
        worst = int(np.argmax(per_layer))
        rows["largest layer"].append(f"{numbers.metric(per_layer[worst])} (layer {worst})")
    for name, cells in rows.items():
        table.add_row(name, *cells)
    return table
