"""score: the teacher's top-k logprobs for every answer token of the curated rows (from a conversation's first
assistant turn on, with a mask over its assistant turns when it has several).

Requests are the ones TRL's `VLLMClient.get_sequence_logprobs` sends (`teacher/logprobs.py`). The batches are
shared out over datatrove tasks (`score.tasks`, on `score.executor`), each talking to its endpoint of the run
(`teacher/tasks.py`). Each batch is written to `.work/score/parts/` as it finishes, so a crashed run re-scores
nothing it already has.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datatrove.pipeline.base import PipelineStep
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from dataengine.errors import StageError
from dataengine.logs import datatrove_logs_to
from dataengine.manifest import Manifest, fingerprint_files
from dataengine.recipe import Recipe, ScoreConfig
from dataengine.rows import (
    SCORED_FEATURES,
    ReasoningFormat,
    batch_key,
    conversation_ids,
    iter_rows,
    reasoning_form,
    reasoning_reads,
    require_reasoning_template,
    stage_writer,
    with_reasoning,
    write_parquet,
)
from dataengine.stage import RunContext, Stage, StageResult
from dataengine.teacher.logprobs import ServedLogprobs, sequence_logprobs
from dataengine.teacher.server import resolve_model
from dataengine.teacher.tasks import TaskTeacher, run_until_done, watching


class ScoreStage(Stage):
    name = "score"
    reads = ("teacher", "score")

    def __init__(self, recipe: Recipe, base_dir: Path, rows_from: str) -> None:
        self.recipe = recipe
        self.cfg: ScoreConfig = recipe.score
        self.base_dir = base_dir
        self.inputs = {"rows": rows_from}
        self.outputs = {"rows": "scored"}
        # the teacher scores the conversation the student learns: with its reasoning, in the training's form
        self.form = reasoning_form(recipe)
        self.reads = (*self.reads, *reasoning_reads(recipe))

    def outside(self) -> list[str]:
        urls = self.recipe.teacher.urls
        return ["asks " + (", ".join(urls) if urls else "the run's vLLM server")]

    def run(self, inputs: dict[str, Path], outputs: dict[str, Path], work_dir: Path, ctx: RunContext) -> StageResult:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(resolve_model(self.recipe.teacher, ctx.log))
        limit = None if self.recipe.teacher.urls else self.recipe.teacher.vllm.max_model_len
        parts = work_dir / "parts"
        parts.mkdir(exist_ok=True)
        # the tasks read their rows from a file (a pipeline travels to Ray workers and Slurm jobs pickled), one
        # row group per batch
        table = work_dir / "todo.parquet"
        todo = _write_todo(
            _template_checked(
                iter_rows(inputs["rows"]), self.form, lambda: resolve_model(self.recipe.teacher, ctx.log)
            ),
            tokenizer,
            limit,
            self.cfg.batch_size,
            table,
            self.form,
        )
        sizes = dict(todo.batches)
        tasks = min(self.cfg.tasks, len(todo.batches)) or 1

        def pipeline(teacher: TaskTeacher) -> list:
            return [ScoreBatches(str(table), str(parts), self.cfg, teacher)]

        with Progress(console=ctx.console, transient=True) as progress, datatrove_logs_to(work_dir / "datatrove.log"):
            bar = progress.add_task("scoring", total=sum(sizes.values()))
            # the tasks may run in other processes: the bar counts the parts they have written
            with watching(lambda: progress.update(bar, completed=_done(parts, sizes))):
                run_until_done(ctx.endpoints(), self.cfg, pipeline, tasks, work_dir, "scoring")
        # part by part into the shards: scored rows carry top-k logprobs for every answer token, the largest rows
        # of a run
        if todo.last_turn_only:
            ctx.log(
                f"{todo.last_turn_only} conversations are scored on their last assistant turn only: the teacher's "
                "chat template renders an earlier turn differently once more turns follow"
            )
        tokens = scored = 0
        with stage_writer(outputs["rows"], SCORED_FEATURES) as writer:
            for name, _ in todo.batches:
                part = pq.read_table(parts / name)
                tokens += _learned_tokens(part)
                scored += part.num_rows
                writer.write_table(part)
            if scored != sum(sizes.values()):  # raised inside: the shards written are removed
                raise StageError(f"score: {sum(sizes.values())} rows to score but {scored} scored; see {parts}")
        table.unlink()
        return StageResult(
            rows_in=todo.rows_in,
            rows_out=writer.rows,
            output_fingerprint=fingerprint_files(writer.paths),
            drops={"too_long_to_score": todo.too_long} if todo.too_long else {},
            stats={
                "top_k": self.cfg.top_k,
                "answer_tokens": tokens,
                "tasks": tasks,
                **({"last_turn_only": todo.last_turn_only} if todo.last_turn_only else {}),
            },
        )

    def summary(self, manifest: Manifest, outputs: dict[str, Path], console: Console) -> None:
        table = Table(title=f"scored: {manifest.rows_out} of {manifest.rows_in} rows", title_justify="left")
        table.add_column("answer tokens", justify="right")
        table.add_column("top-k per token", justify="right")
        table.add_row(str(manifest.stats["answer_tokens"]), str(manifest.stats["top_k"]))
        console.print(table)
        if manifest.drops:
            console.print("dropped: " + ", ".join(f"{reason} {n}" for reason, n in manifest.drops.items()))
        console.print(f"output: {outputs['rows']}")


class ScoreBatches(PipelineStep):
    """One task's share of the scoring: every world_size-th batch from its rank, each written whole to the parts
    folder as it finishes (a batch with a part is not sent again)."""

    name = "🎯 score"
    type = "🤖 - INFERENCE"

    def __init__(self, table: str, parts: str, cfg: ScoreConfig, teacher: TaskTeacher) -> None:
        super().__init__()
        self.table, self.parts, self.cfg, self.teacher = table, Path(parts), cfg, teacher

    def run(self, data: Iterable | None, rank: int = 0, world_size: int = 1) -> None:
        table = pq.ParquetFile(self.table)  # a row group per batch: every world_size-th from its rank is this task's
        mine = range(rank, table.num_row_groups, world_size)
        names = {i: _part_name(table.read_row_group(i, columns=["id"]).column("id").to_pylist()) for i in mine}
        todo = [i for i, name in names.items() if not (self.parts / name).is_file()]
        if not todo:
            return
        with self.teacher.open(rank) as (url, _), ServedLogprobs(url) as client:
            for i in todo:
                batch = table.read_row_group(i).to_pylist()
                # a part is either whole or absent: a crash re-scores only the batch it interrupted
                write_parquet(_score(client, batch, self.cfg), self.parts / names[i], SCORED_FEATURES)
                self.stat_update("batches")
                self.stat_update("rows", value=len(batch))


class _Todo(NamedTuple):
    """The rows to score, as written for the tasks: each batch's part name and rows, in order; and the
    conversations whose chat template gave their last assistant turn alone (`rows.conversation_ids`)."""

    batches: list[tuple[str, int]]
    rows_in: int
    too_long: int
    last_turn_only: int = 0


# a row as the tasks read it: the curated row with its token ids, before the teacher's logprobs
_TODO_SCHEMA = pa.schema([f for f in SCORED_FEATURES.arrow_schema if not f.name.startswith("teacher_topk_")])


def _write_todo(
    rows: Iterable[dict], tokenizer, limit: int | None, batch_size: int, path: Path, form: ReasoningFormat
) -> _Todo:
    """The rows with their token ids (the reasoning in the answer as `form` puts it), into `path` a batch (one
    row group) at a time: whole or absent. Rows that do not fit the teacher's context are counted, not written."""
    batches: list[tuple[str, int]] = []
    rows_in = too_long = last_turn_only = 0
    pending: list[dict] = []
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, _TODO_SCHEMA) as writer:

        def flush() -> None:
            writer.write_table(pa.Table.from_pylist(pending, schema=_TODO_SCHEMA), row_group_size=len(pending))
            batches.append((_part_name(r["id"] for r in pending), len(pending)))
            pending.clear()

        for row in rows:
            rows_in += 1
            ids, start, mask = conversation_ids(tokenizer, with_reasoning(row["messages"], row.get("reasoning"), form))
            last_turn_only += mask is None and sum(m["role"] == "assistant" for m in row["messages"]) > 1
            # the request generates one token after the sequence, so it must fit with one to spare
            if limit is not None and len(ids) + 1 > limit:
                too_long += 1
                continue
            pending.append({**row, "token_ids": ids, "completion_start": start, "completion_mask": mask})
            if len(pending) == batch_size:
                flush()
        if pending:
            flush()
    os.replace(tmp, path)
    return _Todo(batches, rows_in, too_long, last_turn_only)


def _template_checked(rows: Iterable[dict], form: ReasoningFormat, teacher: Callable[[], str]) -> Iterator[dict]:
    """`rows`, the `template` form refused at the first row with reasoning if the teacher's chat template would
    drop it (rows without reasoning need no thinking section)."""
    checked = form != "template"
    for row in rows:
        if not checked and row.get("reasoning") is not None:
            require_reasoning_template(teacher(), "the teacher")
            checked = True
        yield row


def _learned_tokens(part: pa.Table) -> int:
    """The tokens a student learns in a scored part: a single answer's every token, a conversation's masked ones
    (the teacher was also asked for the user turns between them)."""
    masks = part.column("completion_mask")
    whole = pc.list_value_length(part.column("teacher_topk_ids")).filter(pc.is_null(masks))
    return int((pc.sum(whole).as_py() or 0) + (pc.sum(pc.list_flatten(masks)).as_py() or 0))


def _part_name(ids: Iterable[str]) -> str:
    return f"part-{batch_key(ids)}.parquet"


def _done(parts: Path, sizes: dict[str, int]) -> int:
    return sum(sizes.get(name, 0) for name in os.listdir(parts))


def _score(client, batch: list[dict], cfg: ScoreConfig) -> list[dict]:
    result = sequence_logprobs(
        client,
        [r["token_ids"] for r in batch],
        [r["completion_start"] for r in batch],
        cfg.top_k,
        cfg.max_concurrent_requests,
        "score",
    )
    out = []
    for row, ids, logprobs in zip(batch, result["logprob_token_ids"], result["logprobs"], strict=True):
        out.append({**row, "teacher_topk_ids": ids, "teacher_topk_logprobs": logprobs})
    return out
