"""What `validate` reads of a local prompt file before any teacher time is spent: its columns and, in the
language column, values the language check can match. Only a sample of a large file is read (`SAMPLE_ROWS`),
with json and pyarrow rather than `datasets`, so validating stays under two seconds."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from dataengine.recipe import PromptSource, resolve_path

SAMPLE_ROWS = 1000
_BCP47 = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})*")


def _sample(path: Path) -> tuple[list[str], list[dict]]:
    """The file's columns and its first rows (at most SAMPLE_ROWS)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        columns = parquet.schema_arrow.names
        batch = next(parquet.iter_batches(batch_size=SAMPLE_ROWS), None)
        return columns, batch.to_pylist() if batch is not None else []
    if path.suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    rows.append(json.loads(line))
                if len(rows) >= SAMPLE_ROWS:
                    break
    else:  # .json: a list of rows (datasets also takes a {column: [values]} mapping)
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            data = [dict(zip(data, values, strict=False)) for values in zip(*data.values(), strict=False)]
        rows = list(data[:SAMPLE_ROWS]) if isinstance(data, list) else []
    columns = list(dict.fromkeys(key for row in rows if isinstance(row, dict) for key in row))
    return columns, [row for row in rows if isinstance(row, dict)]


def source_problems(i: int, source: PromptSource, base_dir: Path, known_languages: set[str]) -> list[str]:
    """Problems of `generate.sources[i]` that its file shows: a column that is not there, language values the
    curation's language check cannot match (every row in them would be dropped as wrong_language)."""
    if source.path is None:
        return []
    path = resolve_path(source.path, base_dir)
    where = f"generate.sources[{i}]"
    try:
        columns, rows = _sample(path)
    except (OSError, ValueError) as exc:  # json and arrow errors are ValueErrors
        return [f"{where}.path: {path.name} cannot be read as {path.suffix[1:]}: {exc}"]
    problems = []
    for name, column in (("field", source.field), ("language_field", source.language_field)):
        if column is not None and column not in columns:
            problems.append(f"{where}.{name}: no column {column!r} in {path.name} (columns: {', '.join(columns)})")
    if source.language_field in columns:
        values = Counter(str(row.get(source.language_field)) for row in rows)
        bad = {v: n for v, n in values.items() if not _BCP47.fullmatch(v) or v.split("-")[0] not in known_languages}
        if bad:
            shown = ", ".join(f"{v!r} ({n} rows)" for v, n in sorted(bad.items(), key=lambda kv: -kv[1])[:5])
            problems.append(
                f"{where}.language_field: {shown} in the first {len(rows)} rows of {path.name} are not BCP-47 "
                "codes the language check knows (e.g. pt-BR, es, zh); curation would drop every row in them as "
                "wrong_language"
            )
    return problems
