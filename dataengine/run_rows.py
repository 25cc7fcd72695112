"""`dataengine rows`: any stage's rows of a run, queried with polars and shown as a terminal table or written
to a file.

Every stage folder of the run that holds shards is a table named by its folder (generated, ingested, curated,
rejected, judged, judge_rejected, preference, balanced, balance_rejected, routing, scored, published, or a stage of
the user's own). The scans are lazy: a query reads the columns
and row groups it needs, and the terminal shows its first rows without the rest being read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dataengine.errors import UserError
from dataengine.rows.frames import scan
from dataengine.run_folder import RunFolder

# what a terminal shows of a stage's rows unless --columns says otherwise: who the row is, why it was dropped,
# what the judge gave it, then its turns; the other columns are named under the table
READABLE = ("id", "kind", "language", "drop_step", "drop_reason", "judge_score", "router_entropy", "messages")
SHORT_CHARS = 24  # the other columns' width, past which a value folds
TEXT_CHARS = 400  # a cell's text is cut here in the terminal (a file gets it whole)
FORMATS = {".jsonl": "ndjson", ".ndjson": "ndjson", ".parquet": "parquet", ".csv": "csv"}


def tables(run_dir: Path) -> dict[str, pl.LazyFrame]:
    """The run's stage folders that hold rows, by folder name, in pipeline order."""
    run = RunFolder(run_dir)
    if not run.exists:
        raise UserError(f"{run_dir} is not a run folder (no run.json); runs are under runs/<name>")
    found: dict[str, pl.LazyFrame] = {}
    for stage in run.stages:
        for role in run.info.get("stages", {}).get(stage, {}) or [None]:
            folder = run.folder(stage, role)
            if folder is not None and (frame := scan(folder)) is not None:
                found[folder.relative_to(run.path).as_posix()] = frame
    return found


@dataclass
class Query:
    """What the user asked of the rows: a stage and its condition, columns and order, or one whole SQL query."""

    stage: str | None = None
    where: str | None = None
    columns: list[str] | None = None
    sort: list[str] | None = None
    sql: str | None = None
    limit: int | None = None


def select(frames: dict[str, pl.LazyFrame], query: Query) -> pl.LazyFrame:
    """The rows `query` asks for, lazily; unknown tables and columns and malformed SQL are a UserError that
    names what exists."""
    if query.sql:
        if query.stage or query.where or query.columns or query.sort:
            raise UserError("--sql is a whole query: give the table, condition, columns and order in it")
        try:
            frame = pl.SQLContext(frames, eager=False).execute(query.sql)
        except pl.exceptions.PolarsError as exc:
            raise UserError(f"--sql {query.sql!r}: {_first_line(exc)} (the tables: {', '.join(frames)})") from exc
    else:
        frame = frames[_stage(frames, query.stage)]
        names = frame.collect_schema().names()
        if query.where:
            try:
                frame = frame.filter(pl.sql_expr(query.where))
            except pl.exceptions.PolarsError as exc:
                raise UserError(f"--where {query.where!r}: {_first_line(exc)}") from exc
        if query.sort:
            keys = [key.removeprefix("-") for key in query.sort]
            _known(keys, names, "--sort")
            frame = frame.sort(keys, descending=[key.startswith("-") for key in query.sort], nulls_last=True)
        if query.columns:
            _known(query.columns, names, "--columns")
            frame = frame.select(query.columns)
    return frame.head(query.limit) if query.limit is not None else frame


def collect(frame: pl.LazyFrame, what: str) -> pl.DataFrame:
    """Run the query on polars' streaming engine; a polars error (an unknown column in a condition, bad SQL, a
    type mismatch) becomes one line naming `what` was asked."""
    try:
        return frame.collect(engine="streaming")
    except pl.exceptions.PolarsError as exc:
        raise UserError(f"{what}: {_first_line(exc)}") from exc


def write(frame: pl.LazyFrame, path: Path, what: str) -> None:
    """The rows into `path`, in the format its extension names, streamed (a file may hold every row of a run):
    whole or absent, through a temporary file beside it."""
    if path.suffix not in FORMATS:
        raise UserError(f"--output {path}: write .jsonl, .parquet or .csv (got {path.suffix or 'no extension'!r})")
    partial = path.with_name(f".{path.name}.partial")
    try:
        if FORMATS[path.suffix] == "csv" and (nested := _nested(frame)):
            raise UserError(
                f"--output {path}: csv cannot hold the nested columns {', '.join(nested)}; "
                "leave them out with --columns, or write .jsonl or .parquet"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        {"ndjson": frame.sink_ndjson, "parquet": frame.sink_parquet, "csv": frame.sink_csv}[FORMATS[path.suffix]](
            partial
        )
        partial.replace(path)
    except pl.exceptions.PolarsError as exc:
        raise UserError(f"{what}: {_first_line(exc)}") from exc
    except OSError as exc:
        raise UserError(f"--output {path}: {exc.strerror or exc}") from exc
    finally:
        if partial.is_file():
            partial.unlink()


def show(rows: pl.DataFrame, console: Console, title: str, chosen: bool) -> None:
    """The rows as a terminal table: texts cut at TEXT_CHARS, chat turns one per line. Unless the columns were
    `chosen`, a stage's rows show the READABLE columns and name the others under the table."""
    names = rows.columns
    # a readable column that is empty on this page (no drop reason among kept rows) is left out
    readable = [c for c in READABLE if c in names and rows.get_column(c).null_count() < len(rows)]
    shown = names if chosen or not readable else readable
    cells = [[_cell(row[name]) for name in shown] for row in rows.select(shown).iter_rows(named=True)]
    # the short columns as wide as their values up to SHORT_CHARS (past it they fold); the turns take the rest
    widths = {
        name: min(max([len(name)] + [len(r[i]) for r in cells]), max(SHORT_CHARS, len(name)))
        for i, name in enumerate(shown)
        if name != "messages"
    }
    table = Table(show_lines=True)
    for name in shown:
        if name == "messages":
            table.add_column(
                name, overflow="fold", width=max(24, console.width - sum(w + 3 for w in widths.values()) - 4)
            )
        else:
            # on a narrow terminal rich shrinks the columns to fit, none under its header's first 8 characters
            table.add_column(escape(name), overflow="fold", max_width=widths[name], min_width=min(len(name), 8))
    for row in cells:
        table.add_row(*row)
    console.print(title, highlight=False, markup=False)
    console.print(table)
    if hidden := [c for c in names if c not in shown]:
        console.print(f"[dim]other columns (--columns to show them): {escape(', '.join(hidden))}[/dim]")


def describe(frames: dict[str, pl.LazyFrame], console: Console) -> None:
    """The run's tables: rows and columns of each (row counts from the parquet footers)."""
    table = Table(title="tables (dataengine rows RUN TABLE, or --sql over them by name)", title_justify="left")
    for column in ("table", "rows", "columns"):
        table.add_column(column, justify="right" if column == "rows" else "left", overflow="fold")
    for name, frame in frames.items():
        rows = collect(frame.select(pl.len()), name).item()
        table.add_row(escape(name), f"{rows:,}", escape(", ".join(frame.collect_schema().names())))
    console.print(table)


def _stage(frames: dict[str, pl.LazyFrame], stage: str | None) -> str:
    if stage in frames:
        return stage
    given = f"no table {stage!r}" if stage else "name a table"
    raise UserError(f"{given} in this run; its tables: {', '.join(frames) or 'none (no stage wrote rows yet)'}")


def _known(asked: Iterable[str], names: list[str], option: str) -> None:
    if unknown := [c for c in asked if c not in names]:
        raise UserError(f"{option}: no column {', '.join(map(repr, unknown))}; the columns: {', '.join(names)}")


def _nested(frame: pl.LazyFrame) -> list[str]:
    return [name for name, dtype in frame.collect_schema().items() if dtype.is_nested()]


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, list) and value and all(isinstance(v, dict) and "content" in v for v in value):
        return "\n".join(f"[bold]{escape(str(v.get('role') or '?'))}[/bold]: {_cut(str(v['content']))}" for v in value)
    if isinstance(value, list):
        return f"[{len(value)} items] {_cut(json.dumps(value[:8], default=str))}"
    if isinstance(value, dict):
        return _cut(json.dumps(value, ensure_ascii=False, default=str))
    if isinstance(value, float):
        return f"{value:.4g}"
    return _cut(str(value))


def _cut(text: str) -> str:
    return escape(text if len(text) <= TEXT_CHARS else text[:TEXT_CHARS] + f"… (+{len(text) - TEXT_CHARS} chars)")
