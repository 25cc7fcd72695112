"""ingest: rows you already have (the recipe's `ingest` block) read into the run as if generated, for curation,
the judge, routing, scoring, training and publishing.

A row is a `messages` list whose last turn is the answer, or a prompt and an answer column. Rows that are
dataengine's own (a dataset this engine published: they carry its id and provenance columns) keep them; other
rows get an id from their source and content, and `task: ingested`. Rows without a usable answer are counted
as drops, never lost in silence: rows in = rows out + dropped.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from dataengine.manifest import Manifest, fingerprint_files
from dataengine.recipe import ROW_FILES, Recipe, RowSource, resolve_path
from dataengine.rows import SAMPLE_FEATURES, count_groups, sample_file, stage_writer
from dataengine.stage import RunContext, Stage, StageResult

# the columns that make a row one of ours: its provenance is kept as it is
_OURS = ("id", "messages", "kind", "language", "teacher_model", "run_id")


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
        """Each local source has row files with the columns the block names (a sample of the first file)."""
        if recipe.ingest is None:
            return []
        problems = []
        for i, source in enumerate(recipe.ingest.sources):
            if source.path is None or not resolve_path(source.path, base_dir).exists():
                continue  # a Hub dataset is read at run time; a missing path is the schema's problem
            files = row_files(source, base_dir)
            if not files:
                problems.append(f"ingest.sources[{i}].path: no .jsonl, .json or .parquet file under {source.path}")
                continue
            try:
                columns, _ = sample_file(files[0])
            except (OSError, ValueError) as exc:
                problems.append(f"ingest.sources[{i}].path: {files[0].name} cannot be read: {exc}")
                continue
            wanted = [("prompt_field", source.prompt_field), ("answer_field", source.answer_field)]
            if source.prompt_field is None:
                wanted = [("messages_field", source.messages_field)]
            wanted.append(("language_field", source.language_field))
            for name, column in wanted:
                if column is not None and column not in columns:
                    problems.append(
                        f"ingest.sources[{i}].{name}: no column {column!r} in {files[0].name} "
                        f"(columns: {', '.join(columns)})"
                    )
        return problems

    def run(self, inputs: dict[str, Path], outputs: dict[str, Path], work: Path, ctx: RunContext) -> StageResult:
        drops: Counter[str] = Counter()
        groups = Counter()
        rows_in = 0
        created = datetime.now(UTC).isoformat()
        with stage_writer(outputs["rows"], SAMPLE_FEATURES) as writer:
            for source in self.cfg.sources:
                ctx.log(f"reading {source.origin}")
                for index, record in enumerate(self._records(source)):
                    rows_in += 1
                    row = to_row(record, source, index, ctx.run_id, created)
                    if isinstance(row, str):
                        drops[row] += 1
                        continue
                    groups.update(count_groups([row]))
                    writer.write(row)
        return StageResult(
            rows_in=rows_in,
            rows_out=writer.rows,
            output_fingerprint=fingerprint_files(writer.paths),
            drops=dict(drops),
            stats={"rows_by_kind_language": dict(sorted(groups.items())), "sources": len(self.cfg.sources)},
        )

    def _records(self, source: RowSource) -> Iterator[dict]:
        """The source's rows, a batch at a time through `datasets` (which memory-maps them, and streams none)."""
        from datasets import load_dataset

        if source.path is not None:
            files = row_files(source, self.base_dir)
            by_kind: dict[str, list[str]] = {}
            for path in files:
                by_kind.setdefault("parquet" if path.suffix == ".parquet" else "json", []).append(str(path))
            parts = [load_dataset(builder, data_files=paths, split="train") for builder, paths in by_kind.items()]
        else:
            parts = [load_dataset(source.dataset, split=source.split)]
        read = 0
        for part in parts:
            for batch in part.iter(batch_size=1024):
                for record in (dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)):
                    if source.limit is not None and read >= source.limit:
                        return
                    read += 1
                    yield record

    def summary(self, manifest: Manifest, outputs: dict[str, Path], console: Console) -> None:
        counts = ", ".join(f"{group} {n}" for group, n in manifest.stats.get("rows_by_kind_language", {}).items())
        dropped = ", ".join(f"{reason} {n}" for reason, n in manifest.drops.items())
        console.print(f"ingested: {manifest.rows_out} of {manifest.rows_in} rows ({counts})")
        if dropped:
            console.print(f"dropped: {dropped}")
        console.print(f"output: {outputs['rows']}")


def to_row(record: dict, source: RowSource, index: int, run_id: str, created: str) -> dict | str:
    """The record as a sample row, or the reason it cannot be one (a drop)."""
    if source.prompt_field is not None:
        prompt, answer = record.get(source.prompt_field), record.get(source.answer_field)
        if not isinstance(prompt, str) or not prompt.strip():
            return "no_prompt"
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    else:
        messages = record.get(source.messages_field)
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages) or len(messages) < 2:
            return "no_conversation"
        messages = [{"role": str(m.get("role")), "content": m.get("content")} for m in messages]
    last = messages[-1]
    if last["role"] != "assistant" or not isinstance(last["content"], str) or not last["content"].strip():
        return "no_answer"
    ours = all(record.get(column) is not None for column in _OURS)
    row = {column: record.get(column) for column in SAMPLE_FEATURES} if ours else dict.fromkeys(SAMPLE_FEATURES)
    language = record.get(source.language_field) if source.language_field else None
    kind = record.get("kind") if ours else source.kind
    row |= {
        "messages": messages,
        "kind": kind if kind in ("chat", "code") else source.kind,
        "language": str(language) if language is not None else (row["language"] or source.language),
    }
    if not ours:
        content = json.dumps([source.origin, index, messages], ensure_ascii=False)
        row |= {
            "id": hashlib.sha256(content.encode()).hexdigest()[:24],
            "task": "ingested",
            "teacher_model": source.model,
            "run_id": run_id,
            "created_at": created,
        }
    return row
