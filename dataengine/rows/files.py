"""A sample of a row file (jsonl, json, parquet) read without `datasets`: what `validate` checks of the files a
recipe names (prompt files, rows to ingest) before any teacher time is spent, in well under a second."""

from __future__ import annotations

import json
from pathlib import Path

SAMPLE_ROWS = 1000


def _json_lines(path: Path) -> list:
    rows = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                rows.append(json.loads(line))
            if len(rows) >= SAMPLE_ROWS:
                break
    return rows


def column_problems(where: str, path: Path, wanted: list[tuple[str, str | None]]) -> tuple[list[str], list[dict]]:
    """The problems of the columns a recipe entry names in `path` (`wanted`: (its key, the column), a None
    column not named), and the sample read: a file that cannot be read, or a column it lacks."""
    try:
        columns, rows = sample_file(path)
    except (OSError, ValueError) as exc:  # json and arrow errors are ValueErrors
        return [f"{where}.path: {path.name} cannot be read as {path.suffix[1:]}: {exc}"], []
    if not rows and not columns:
        return [], []  # an empty file adds no rows
    problems = [
        f"{where}.{key}: no column {column!r} in {path.name} (columns: {', '.join(columns)})"
        for key, column in wanted
        if column is not None and column not in columns
    ]
    return problems, rows


def sample_file(path: Path) -> tuple[list[str], list[dict]]:
    """The file's columns and its first rows (at most SAMPLE_ROWS)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        columns = parquet.schema_arrow.names
        batch = next(parquet.iter_batches(batch_size=SAMPLE_ROWS), None)
        return columns, batch.to_pylist() if batch is not None else []
    rows = _json_lines(path) if path.suffix == ".jsonl" else None
    if rows is None:  # .json: a list of rows, a {column: [values]} mapping, or JSON lines (datasets takes all three)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            data = _json_lines(path)
        if isinstance(data, dict):
            data = [dict(zip(data, values, strict=False)) for values in zip(*data.values(), strict=False)]
        rows = list(data[:SAMPLE_ROWS]) if isinstance(data, list) else []
    columns = list(dict.fromkeys(key for row in rows if isinstance(row, dict) for key in row))
    return columns, [row for row in rows if isinstance(row, dict)]
