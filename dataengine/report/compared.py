"""Runs side by side, as grids of cells both renderers draw: `dataengine rows --against/--last` in the terminal,
and report.html's "against the run before" for a scheduled run. Kept rows per group, drop reasons, the kept
answers' length and how far the teacher's expert load drifted from the first run's.

Every figure is a run's facts (`facts.collect`, polars over its shards), so a comparison says what each run's
report says.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataengine import numbers
from dataengine.experts.metrics import js_divergence
from dataengine.facts import RunFacts
from dataengine.rows import queries
from dataengine.run_folder import RunFolder

# the funnel's steps that keep rows, last first: a run's kept rows are those of the last it has
KEPT_STEPS = ("balanced", "judged", "kept")
SCHEDULED = "scheduled"  # runs/<name>/scheduled/<UTC stamp>/: where `dataengine schedule` puts each run


@dataclass
class Grid:
    """One comparison table: its title, the first column's name, and rows of cells (a label, then one per run)."""

    title: str
    first: str
    rows: list[list[str]]


def scheduled_runs(home: Path) -> list[Path]:
    """A recipe's scheduled runs (runs/<name>/scheduled/*), oldest first."""
    return sorted(p for p in (home / SCHEDULED).glob("*") if RunFolder(p).exists)


def run_before(run_dir: Path) -> Path | None:
    """For a scheduled run, the scheduled run of its recipe just before it; None for any other run."""
    if run_dir.parent.name != SCHEDULED:
        return None
    earlier = [p for p in scheduled_runs(run_dir.parent.parent) if p.name < run_dir.name]
    return earlier[-1] if earlier else None


def labels(folders: list[Path]) -> list[str]:
    """Short column names: the folder's name, unless two runs share it."""
    names = [folder.name for folder in folders]
    return names if len(set(names)) == len(names) else [f"run {i + 1}" for i in range(len(folders))]


def grids(facts: list[RunFacts]) -> list[Grid]:
    """The comparison of `facts`' runs, a cell per run in their order; the drift only where a run was routed."""
    found = [_kept(facts), _drops(facts), _lengths(facts)]
    return found + ([_drift(facts)] if any(_load(f) is not None for f in facts) else [])


def _kept(facts: list[RunFacts]) -> Grid:
    """Rows per kind/language group that the run's last sorting step kept (balance, else the judge, else curation:
    the drops below are those of every step), of those generated where the run generated."""
    rows = []
    for group in sorted({g for f in facts for g in f.funnel}):
        cells = []
        for f in facts:
            steps = f.funnel.get(group, {})
            kept = next((steps[step] for step in KEPT_STEPS if step in steps), 0)
            cells.append(f"{kept} of {steps['generated']}" if "generated" in steps else str(kept))
        rows.append([group, *cells])
    steps = [next((step for step in KEPT_STEPS if step in f.funnel_steps), "kept") for f in facts]
    return Grid(f"rows kept per group ({' / '.join(dict.fromkeys(steps))}; of those generated)", "group", rows)


def _drops(facts: list[RunFacts]) -> Grid:
    reasons = sorted({r for f in facts for r in f.drops}, key=lambda r: (-sum(f.drops.get(r, 0) for f in facts), r))
    return Grid("why rows were dropped", "reason", [[r, *(str(f.drops.get(r, 0)) for f in facts)] for r in reasons])


def _lengths(facts: list[RunFacts]) -> Grid:
    """The kept answers' length in characters: median and 90th percentile, as `dataengine status` gives them."""
    summaries = [queries.length_summary(k) if len(k := f.answer_chars.get("kept", [])) else None for f in facts]
    rows = [["rows", *(str(s.rows) if s else "0" for s in summaries)]]
    for name, field in (("median", "median"), ("90th percentile", "p90")):
        rows.append([name, *(numbers.metric(float(getattr(s, field))) if s else numbers.NO_VALUE for s in summaries)])
    return Grid("kept answers' length (characters)", "", rows)


def _load(facts: RunFacts) -> np.ndarray | None:
    """The run's expert load (layers x experts); None when the run was not routed, or routed no rows (a map
    without layers)."""
    load = np.array(facts.routing["overall"]["load"], dtype=np.float64) if facts.routing else None
    return load if load is not None and load.ndim == 2 and load.size else None


def _drift(facts: list[RunFacts]) -> Grid:
    """How far each run's expert load moved from the first routed run's: the JS divergence per MoE layer (base 2,
    0 = the same load), its mean and its largest layer."""
    loads = [_load(f) for f in facts]
    reference = next(load for load in loads if load is not None)
    mean, largest = ["mean over layers"], ["largest layer"]
    for load in loads:
        if load is None or load.shape != reference.shape:
            mean.append(numbers.NO_VALUE)
            largest.append(numbers.NO_VALUE)
            continue
        per_layer = js_divergence(load, reference)
        worst = int(np.argmax(per_layer))
        mean.append(numbers.metric(float(np.mean(per_layer))))
        largest.append(f"{numbers.metric(per_layer[worst])} (layer {worst})")
    return Grid("expert load drift from the first routed run (JS divergence over layers)", "", [mean, largest])
