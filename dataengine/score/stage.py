"""score: the teacher's top-k logprobs for every answer token of the curated rows.

Requests go through TRL's `VLLMClient.get_sequence_logprobs`, the call TRL's own server
distillation uses: the completions endpoint with `prompt_logprobs` over prompt + answer. Each batch
is written to `.work/score/parts/` as it finishes, so a crashed run re-scores nothing it already has.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from dataengine.errors import StageError
from dataengine.manifest import Manifest, fingerprint_files
from dataengine.recipe import Recipe, ScoreConfig
from dataengine.rows import (
    SCORED_FEATURES,
    batch_key,
    prompt_and_full_ids,
    read_parquet,
    read_rows,
    write_parquet,
    write_shards,
)
from dataengine.stage import RunContext, Stage, StageResult
from dataengine.teacher.server import resolve_model


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
        batches = [todo[i : i + self.cfg.batch_size] for i in range(0, len(todo), self.cfg.batch_size)]
        client = None
        with Progress(console=ctx.console, transient=True) as progress:
            bar = progress.add_task("scoring", total=len(todo))
            for batch in batches:
                path = parts / f"part-{batch_key(r['id'] for r in batch)}.parquet"
                while not path.is_file():
                    client = client or _client(ctx)
                    try:
                        # a part is either whole or absent: a crash re-scores only the batch it interrupted
                        write_parquet(_score(client, batch, self.cfg), path, SCORED_FEATURES)
                    except StageError as exc:
                        # a teacher that died is restarted (on a new port: a new client); otherwise it is ours
                        if not ctx.teacher.recover(str(exc).splitlines()[0]):
                            raise
                        client = None
                progress.advance(bar, len(batch))
        scored = read_parquet(parts / f"part-{batch_key(r['id'] for r in b)}.parquet" for b in batches)
        if len(scored) != len(todo):
            raise StageError(f"score: {len(todo)} rows to score but {len(scored)} scored; see {parts}")
        paths = write_shards(scored, outputs["rows"], features=SCORED_FEATURES)
        tokens = sum(len(r["teacher_topk_ids"]) for r in scored)
        return StageResult(
            rows_in=len(rows),
            rows_out=len(scored),
            output_fingerprint=fingerprint_files(paths),
            drops={"too_long_to_score": too_long} if too_long else {},
            stats={"top_k": self.cfg.top_k, "answer_tokens": tokens},
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


def _client(ctx: RunContext):
    with warnings.catch_warnings():
        # TRL warns that it was tested up to vLLM 0.31; the completions endpoint it calls is stable
        warnings.simplefilter("ignore", UserWarning)
        from trl.generation.vllm_client import VLLMClient

        return VLLMClient(base_url=ctx.teacher.url(), connection_timeout=60.0)


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
