"""What `validate` reads of a local prompt file before any teacher time is spent: its columns and, in the
language column, values the language check can match. Only a sample of a large file is read
(`rows.sample_file`), so validating stays under two seconds."""

from __future__ import annotations

from pathlib import Path

from dataengine.recipe import PromptSource, resolve_path
from dataengine.rows import column_problems


def source_problems(i: int, source: PromptSource, base_dir: Path, languages_checked: bool) -> list[str]:
    """Problems of `generate.sources[i]` that its file shows: a column that is not there and, when curation
    checks the answers' language, language values it cannot match (every row in them would be dropped)."""
    if source.path is None:
        return []
    path, where = resolve_path(source.path, base_dir), f"generate.sources[{i}]"
    wanted = [("field", source.field), ("language_field", source.language_field)]
    problems, rows = column_problems(where, path, wanted)
    if languages_checked and source.language_field and any(source.language_field in row for row in rows):
        from dataengine.checks.language import language_column_problem  # loads a model

        values = (row.get(source.language_field) for row in rows)
        problems += filter(None, [language_column_problem(f"{where}.language_field", values, path.name)])
    return problems
