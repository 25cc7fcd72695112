"""ingest: rows you already have (the recipe's `ingest` block) read into the run as if generated, for curation,
the judge, routing, scoring, training and publishing.

A row is a `messages` list of turns (system, user, assistant) whose last turn is the answer, or a prompt and
an answer column. Rows that are dataengine's own (a dataset this engine published: they carry its id and
provenance columns) keep them; other rows get an id from their file, place and content, and `task: ingested`.
A row that cannot be one is counted as a drop with its reason, never lost in silence: rows in = rows out +
dropped.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from dataengine.errors import StageError
from dataengine.manifest import Manifest, fingerprint_files
from dataengine.recipe import ROW_FILES, Recipe, RowSource, resolve_path
from dataengine.rows import SAMPLE_FEATURES, column_problems, count_groups, stage_writer
from dataengine.stage import RunContext, Stage, StageResult

# the columns that make a row one of ours: its provenance is kept as it is
_OURS = ("id", "messages", "kind", "language", "teacher_model", "run_id")
_ROLES = ("system", "user", "assistant")


def row_files(source: RowSource, base_dir: Path) -> list[Path]:
    """The local files of a source: the file, or every row file under the folder, in a stable order."""
    path = resolve_path(source.path, base_dir)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix in ROW_FILES and p.is_file())
    return [path] if path.is_file() else []


class IngestStage(Stage):
    name = "ingest"
    inputs: dict[str, str] = {}
    reads = ("ingest",)

    def __init__(self, recipe: Recipe, base_dir: Path) -> None:
        if recipe.ingest is None:
            raise ValueError("the ingest stage needs an `ingest:` block")
        self.recipe = recipe
        self.cfg = recipe.ingest
        self.base_dir = base_dir
        self.outputs = {"rows": "ingested"}

    def key_files(self) -> list[Path]:
        """New rows in a source's files are new input."""
        return [p for s in self.cfg.sources if s.path for p in row_files(s, self.base_dir)]

    def outside(self) -> list[str]:
        return [f"reads {s.origin}" for s in self.cfg.sources]

    @staticmethod
    def check(recipe: Recipe, base_dir: Path) -> list[str]:
        """Each local source's files have the columns the block names and, where curation checks the answers'
        language, language values it can match (a sample of each file)."""
        if recipe.ingest is None:
            return []
        checked = recipe.curate is not None and recipe.curate.filters.language.enabled
        problems = []
        for i, source in enumerate(recipe.ingest.sources):
            if source.path is None or not resolve_path(source.path, base_dir).exists():
                continue  # a Hub dataset is read at run time (--online reads its columns); a missing path: schema
            files = row_files(source, base_dir)
            if not files:
                problems.append(f"ingest.sources[{i}].path: no .jsonl, .json or .parquet file under {source.path}")
            for path in files:
                problems += _file_problems(f"ingest.sources[{i}]", source, path, checked)
        return problems

    def run(self, inputs: dict[str, Path], outputs: dict[str, Path], work: Path, ctx: RunContext) -> StageResult:
        drops: Counter[str] = Counter()
        groups: Counter[str] = Counter()
        seen: set[str] = set()
        rows_in = 0
        created = datetime.now(UTC).isoformat()
        with stage_writer(outputs["rows"], SAMPLE_FEATURES) as writer:
            for source in self.cfg.sources:
                ctx.log(f"reading {source.origin}")
                for place, record in self._records(source):
                    rows_in += 1
                    row = to_row(record, source, place, ctx.run_id, created)
                    if isinstance(row, str):
                        drops[row] += 1
                    elif row["id"] in seen:  # a published dataset's kind/language configs repeat its rows
                        drops["repeated_id"] += 1
                    else:
                        seen.add(row["id"])
                        groups.update(count_groups([row]))
                        writer.write(row)
        return StageResult(
            rows_in=rows_in,
            rows_out=writer.rows,
            output_fingerprint=fingerprint_files(writer.paths),
            drops=dict(drops),
            stats={"rows_by_kind_language": dict(sorted(groups.items())), "sources": len(self.cfg.sources)},
        )

    def _records(self, source: RowSource) -> Iterator[tuple[str, dict]]:
        """(a stable place: file and row, or the Hub dataset and row; the record) of each of the source's rows,
        a file at a time through `datasets` (files of one folder need not share their columns)."""
        from datasets import load_dataset

        read = 0
        parts: list[tuple[str, object]] = []
        try:
            if source.path is not None:
                root = resolve_path(source.path, self.base_dir)
                for path in row_files(source, self.base_dir):
                    if path.stat().st_size == 0:
                        continue
                    builder = "parquet" if path.suffix == ".parquet" else "json"
                    place = str(path.relative_to(root)) if root.is_dir() else path.name
                    parts.append((place, load_dataset(builder, data_files=str(path), split="train")))
            else:
                parts.append((source.dataset, load_dataset(source.dataset, split=source.split)))
        except Exception as exc:  # datasets' and the Hub's errors share no base: say which source, not a traceback
            raise StageError(f"ingest: {source.origin} cannot be read: {type(exc).__name__}: {exc}") from exc
        for place, part in parts:
            for index, record in enumerate(part):
                if source.limit is not None and read >= source.limit:
                    return
                read += 1
                yield f"{place}#{index}", record

    def summary(self, manifest: Manifest, outputs: dict[str, Path], console: Console) -> None:
        counts = ", ".join(f"{group} {n}" for group, n in manifest.stats.get("rows_by_kind_language", {}).items())
        dropped = ", ".join(f"{reason} {n}" for reason, n in manifest.drops.items())
        console.print(f"ingested: {manifest.rows_out} of {manifest.rows_in} rows ({counts})")
        if dropped:
            console.print(f"dropped: {dropped}")
        console.print(f"output: {outputs['rows']}")


def _file_problems(where: str, source: RowSource, path: Path, languages_checked: bool) -> list[str]:
    wanted = [("prompt_field", source.prompt_field), ("answer_field", source.answer_field)]
    if source.prompt_field is None:
        wanted = [("messages_field", source.messages_field)]
    problems, rows = column_problems(where, path, [*wanted, ("language_field", source.language_field)])
    if languages_checked and source.language_field and any(source.language_field in row for row in rows):
        from dataengine.checks.language import language_column_problem  # loads a model

        values = (row.get(source.language_field) for row in rows)
        problems += filter(None, [language_column_problem(f"{where}.language_field", values, path.name)])
    return problems


def _text(content: object) -> str | None:
    """A turn's text: a string, or the text parts of OpenAI's list content; None when it has none."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if parts and all(isinstance(p, str) for p in parts):
            return "".join(parts)
    return None


def _turns(record: dict, source: RowSource) -> list[dict] | str:
    """The record's conversation as turns, or why it has none (a drop reason)."""
    if source.prompt_field is not None:
        prompt, answer = record.get(source.prompt_field), record.get(source.answer_field)
        if not isinstance(prompt, str) or not prompt.strip():
            return "no_prompt"
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    raw = record.get(source.messages_field)
    if not isinstance(raw, list) or len(raw) < 2 or not all(isinstance(m, dict) for m in raw):
        return "no_conversation"
    turns = [{"role": m.get("role"), "content": _text(m.get("content"))} for m in raw]
    if any(t["role"] not in _ROLES or t["content"] is None for t in turns[:-1]):
        return "malformed_turns"  # a role we do not know, or a turn without text
    if not any(t["role"] == "user" for t in turns[:-1]):
        return "no_prompt"
    return turns


def to_row(record: dict, source: RowSource, place: str, run_id: str, created: str) -> dict | str:
    """The record as a sample row, or the reason it cannot be one (a drop). `place` (file and row) makes the
    id of a row that does not bring its own."""
    messages = _turns(record, source)
    if isinstance(messages, str):
        return messages
    last = messages[-1]
    if last["role"] != "assistant" or not isinstance(last["content"], str) or not last["content"].strip():
        return "no_answer"
    ours = all(record.get(column) is not None for column in _OURS)
    row = {column: record.get(column) for column in SAMPLE_FEATURES} if ours else dict.fromkeys(SAMPLE_FEATURES)
    kind = record.get("kind")
    # a math row is one only with the check this engine made when it wrote it (curation drops one without)
    kind = kind if kind in ("chat", "code") or (kind == "math" and ours) else source.kind
    if kind == "code" and not (ours and row.get("code_tests")):
        return "code_without_tests"  # curation runs a code row's own tests: without them it would pass unchecked
    language = record.get(source.language_field) if source.language_field else None
    row |= {
        "messages": messages,
        "kind": kind,
        "language": str(language) if language is not None else (row["language"] or source.language),
    }
    if not ours:
        content = json.dumps([source.origin, place, messages], ensure_ascii=False)
        row |= {
            "id": hashlib.sha256(content.encode()).hexdigest()[:24],
            "task": "ingested",
            "teacher_model": source.model,
            "run_id": run_id,
            "created_at": created,
        }
    return row
