"""score: the teacher's top-k logprobs for every answer token of the curated rows.

Requests go through TRL's `VLLMClient.get_sequence_logprobs`, the call TRL's own server
distillation uses: the completions endpoint with `prompt_logprobs` over prompt + answer. The batches are
shared out over datatrove tasks (`score.tasks`, on `score.executor`), each talking to its endpoint of the run
(`teacher/tasks.py`). Each batch is written to `.work/score/parts/` as it finishes, so a crashed run re-scores
nothing it already has.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

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
    batch_key,
    prompt_and_full_ids,
    read_parquet,
    read_rows,
    stage_writer,
    write_parquet,
)
from dataengine.stage import RunContext, Stage, StageResult
from dataengine.teacher.server import resolve_model
from dataengine.teacher.tasks import TaskTeacher, run_until_done, watching


class ScoreStage(Stage):
    name = "score"
    # where the requests run (the pool, the executor) does not change the logprobs
    key_paths = (
        "teacher",
        "-teacher.endpoints",
        "score",
        "-score.executor",
        "-score.slurm",
        "-score.tasks",
        "-score.workers",
        "-score.ray",
    )

    def __init__(self, recipe: Recipe, base_dir: Path, rows_from: str) -> None:
        self.recipe = recipe
        self.cfg: ScoreConfig = recipe.score
        self.base_dir = base_dir
        self.inputs = {"rows": rows_from}
        self.outputs = {"rows": "scored"}

    def run(self, inputs: dict[str, Path], outputs: dict[str, Path], work_dir: Path, ctx: RunContext) -> StageResult:
        from transformers import AutoTokenizer

        rows = read_rows(inputs["rows"])
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(self.recipe.teacher, ctx.log))
        limit = None if self.recipe.teacher.urls else self.recipe.teacher.vllm.max_model_len
        todo, too_long = [], 0
        for row in rows:
            ids, start = prompt_and_full_ids(tokenizer, row["messages"])
            # the request generates one token after the sequence, so it must fit with one to spare
            if limit is not None and len(ids) + 1 > limit:
                too_long += 1
                continue
            todo.append({**row, "token_ids": ids, "completion_start": start})
        parts = work_dir / "parts"
        parts.mkdir(exist_ok=True)
        batches = _batches(todo, self.cfg.batch_size)
        sizes = {_part_name(batch): len(batch) for batch in batches}
        # the tasks read their rows from a file: a pipeline travels to Ray workers and Slurm jobs pickled
        table = work_dir / "todo.parquet"
        pq.write_table(pa.Table.from_pylist(todo), table.with_suffix(".tmp"))
        os.replace(table.with_suffix(".tmp"), table)
        tasks = min(self.cfg.tasks, len(batches)) or 1

        def pipeline(teacher: TaskTeacher) -> list:
            return [ScoreBatches(str(table), str(parts), self.cfg, teacher)]

        with Progress(console=ctx.console, transient=True) as progress, datatrove_logs_to(work_dir / "datatrove.log"):
            bar = progress.add_task("scoring", total=len(todo))
            # the tasks may run in other processes: the bar counts the parts they have written
            with watching(lambda: progress.update(bar, completed=_done(parts, sizes))):
                run_until_done(ctx.endpoints(), self.cfg, pipeline, tasks, work_dir, "scoring")
        # part by part into the shards: scored rows carry top-k logprobs for every answer token, the largest rows
        # of a run
        tokens = 0
        with stage_writer(outputs["rows"], SCORED_FEATURES) as writer:
            for batch in batches:
                part = pq.read_table(parts / _part_name(batch))
                tokens += pc.sum(pc.list_value_length(part.column("teacher_topk_ids"))).as_py() or 0
                writer.write_table(part)
        if writer.rows != len(todo):
            raise StageError(f"score: {len(todo)} rows to score but {writer.rows} scored; see {parts}")
        table.unlink()
        paths = writer.paths
        return StageResult(
            rows_in=len(rows),
            rows_out=writer.rows,
            output_fingerprint=fingerprint_files(paths),
            drops={"too_long_to_score": too_long} if too_long else {},
            stats={"top_k": self.cfg.top_k, "answer_tokens": tokens, "tasks": tasks},
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
        batches = _batches(read_parquet([Path(self.table)]), self.cfg.batch_size)[rank::world_size]
        todo = [batch for batch in batches if not (self.parts / _part_name(batch)).is_file()]
        if not todo:
            return
        with self.teacher.open(rank) as (url, _):
            client = _client(url)
            for batch in todo:
                # a part is either whole or absent: a crash re-scores only the batch it interrupted
                write_parquet(_score(client, batch, self.cfg), self.parts / _part_name(batch), SCORED_FEATURES)
                self.stat_update("batches")
                self.stat_update("rows", value=len(batch))


def _batches(rows: list[dict], size: int) -> list[list[dict]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def _part_name(batch: list[dict]) -> str:
    return f"part-{batch_key(r['id'] for r in batch)}.parquet"


def _done(parts: Path, sizes: dict[str, int]) -> int:
    return sum(sizes.get(name, 0) for name in os.listdir(parts))


def _client(url: str):
    with warnings.catch_warnings():
        # TRL warns that it was tested up to vLLM 0.31; the completions endpoint it calls is stable
        warnings.simplefilter("ignore", UserWarning)
        from trl.generation.vllm_client import VLLMClient

        return VLLMClient(base_url=url, connection_timeout=60.0)


def _score(client, batch: list[dict], cfg: ScoreConfig) -> list[dict]:
    try:
        result = client.get_sequence_logprobs(
            [r["token_ids"] for r in batch],
            [r["completion_start"] for r in batch],
            top_logprobs=cfg.top_k,
            chunk_size=max(1, math.ceil(len(batch) / cfg.max_concurrent_requests)),
            max_concurrent_requests=cfg.max_concurrent_requests,
        )
    except Exception as exc:  # VLLMClient raises a bare Exception with the server's answer
        raise StageError(f"score: the teacher refused a scoring request: {exc}") from exc
    out = []
    for row, ids, logprobs in zip(batch, result["logprob_token_ids"], result["logprobs"], strict=True):
        out.append({**row, "teacher_topk_ids": ids, "teacher_topk_logprobs": logprobs})
    return out
