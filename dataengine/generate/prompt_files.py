"""What `validate` reads of a local prompt file before any teacher time is spent: its columns and, in the
language column, values the language check can match. Only a sample of a large file is read
(`rows.sample_file`), so validating stays under two seconds."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from dataengine.recipe import PromptSource, resolve_path
from dataengine.rows import sample_file

_BCP47 = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})*")


def source_problems(i: int, source: PromptSource, base_dir: Path, known_languages: set[str]) -> list[str]:
    """Problems of `generate.sources[i]` that its file shows: a column that is not there, language values the
    curation's language check cannot match (every row in them would be dropped as wrong_language)."""
    if source.path is None:
        return []
    path = resolve_path(source.path, base_dir)
    where = f"generate.sources[{i}]"
    try:
        columns, rows = sample_file(path)
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
