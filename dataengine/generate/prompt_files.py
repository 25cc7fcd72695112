"""What `validate` reads of a local prompt file before any teacher time is spent: its columns and, in the
language column, values the language check can match. Only a sample of a large file is read
(`rows.sample_file`), so validating stays under two seconds."""

from __future__ import annotations

from pathlib import Path

from dataengine.recipe import PromptSource, resolve_path
from dataengine.rows import sample_file


def source_problems(i: int, source: PromptSource, base_dir: Path, languages_checked: bool) -> list[str]:
    """Problems of `generate.sources[i]` that its file shows: a column that is not there and, when curation
    checks the answers' language, language values it cannot match (every row in them would be dropped)."""
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
    if languages_checked and source.language_field in columns:
        from dataengine.checks.language import describe_unmatched, unmatched_languages  # loads a model

        if unmatched := unmatched_languages(row.get(source.language_field) for row in rows):
            problems.append(describe_unmatched(f"{where}.language_field", unmatched, len(rows), path.name))
    return problems
