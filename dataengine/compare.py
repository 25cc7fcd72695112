"""`dataengine rows RUN --against OTHER` (or `--last N` on a recipe's folder of scheduled runs): the runs side by
side in the terminal, the grids `report/compared.py` makes."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dataengine.errors import UserError
from dataengine.facts import collect
from dataengine.report.compared import SCHEDULED, grids, labels, scheduled_runs
from dataengine.run_folder import RunFolder


def runs(first: Path, against: list[Path], last: int | None) -> list[Path]:
    """The run folders to compare: `first` and `against`, or the `last` scheduled runs in `first` (a recipe's
    home folder, runs/<name>), oldest first."""
    if last is not None:
        if against:
            raise UserError("--last takes the scheduled runs of one recipe: give its folder alone, without --against")
        stamps = scheduled_runs(first)
        if len(stamps) < 2:
            raise UserError(
                f"{first / SCHEDULED} holds {len(stamps)} scheduled run(s); --last compares at least 2 "
                "(`dataengine schedule once RECIPE` makes one)"
            )
        return stamps[-last:]  # all of them when there are fewer: the line of runs says which
    for path in [first, *against]:
        if not RunFolder(path).exists:
            raise UserError(f"{path} is not a run folder (no run.json); runs are under runs/<name>")
    return [first, *against]


def show(folders: list[Path], console: Console) -> None:
    """The comparison tables, a column per run."""
    facts = [collect(folder) for folder in folders]
    names = labels(folders)
    said = "; ".join(f"{n} = {f.run_dir} ({f.run_id})" for n, f in zip(names, facts, strict=True))
    console.print(f"runs: {said}", markup=False, highlight=False)
    for grid in grids(facts):
        # the cells quote the runs' rows (groups, drop reasons): text, never rich markup
        table = Table(title=escape(grid.title), title_justify="left")
        table.add_column(grid.first)
        for name in names:
            table.add_column(escape(name), justify="right")
        for row in grid.rows:
            table.add_row(*map(escape, row))
        console.print(table)
