"""judge: a model (the run's teacher, or a separate judge endpoint) rates every row curation kept against a
rubric, under a JSON schema. Rows whose mean score is under `curate.judge.threshold` are rejected with
`judge_low`; rows without a readable verdict after `attempts` requests with `judge_error`.

The verdicts are requested through datatrove's InferenceRunner, like generation: each row is a document,
finished verdicts are checkpointed in `.work/judge/`, and a rerun asks only for the rest.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from pathlib import Path
from statistics import mean
from typing import Any

from datatrove.data import Document
from datatrove.pipeline.inference.run_inference import InferenceConfig
from datatrove.pipeline.inference.types import GenerateFunction, InferenceError
from datatrove.pipeline.readers import JsonlReader
from rich.console import Console

from dataengine import numbers
from dataengine.errors import StageError
from dataengine.judge.pairs import preference_pairs
from dataengine.judge.rubric import criteria_of, judge_prompt, read_verdict, verdict_schema
from dataengine.logs import datatrove_logs_to
from dataengine.manifest import Manifest, fingerprint_files
from dataengine.recipe import JudgeConfig, Recipe, TeacherConfig
from dataengine.rows import CURATED_FEATURES, JUDGE_CRITERIA, PREFERENCE_FEATURES, count_groups, read_rows, write_shards
from dataengine.stage import RunContext, Stage, StageResult
from dataengine.teacher.inference import OnDone, inference_config, run_inference
from dataengine.teacher.server import TeacherEndpoint, served_name
from dataengine.teacher.throughput import FILE as THROUGHPUT
from dataengine.teacher.throughput import rate, timeline

LOW, ERROR = "judge_low", "judge_error"
# a retry must differ from the request that failed: greedy decoding would write the same verdict again
RETRY_TEMPERATURE = 0.7


class JudgeStage(Stage):
    name = "judge"
    # the verdicts depend on the judge's block and on the teacher (who judges when no separate judge is named)
    key_paths = ("curate.judge", "teacher.model", "teacher.revision", "teacher.builtin", "-teacher.builtin.source")

    def __init__(self, recipe: Recipe, base_dir: Path, rows_from: str) -> None:
        self.recipe = recipe
        self.cfg: JudgeConfig = recipe.curate.judge
        self.base_dir = base_dir
        self.inputs = {"rows": rows_from}
        self.outputs = {"kept": "judged", "rejected": "judge_rejected"}
        if self.cfg.pairs is not None:
            self.outputs["preference"] = "preference"

    def run(self, inputs: dict[str, Path], outputs: dict[str, Path], work_dir: Path, ctx: RunContext) -> StageResult:
        rows = read_rows(inputs["rows"])
        judge, model = self._judge(ctx, work_dir)
        seconds = 0.0
        try:
            if rows:
                seconds = run_inference(
                    judge,
                    [self._document(row) for row in rows],
                    work_dir,
                    ask_verdict,
                    lambda url: self._config(model, url),
                    ctx.console,
                    "judging",
                )
        finally:
            if judge is not ctx.teacher:
                judge.close()
        verdicts = _verdicts(work_dir / "raw")
        if missing := [row["id"] for row in rows if row["id"] not in verdicts]:
            raise StageError(f"the judge lost {len(missing)} of {len(rows)} rows (see {work_dir / 'logs'}); run again")
        kept, rejected = [], []
        for row in rows:
            judged = {**row, **_columns(verdicts[row["id"]], model)}
            if judged["judge_score"] is None:
                rejected.append({**judged, "drop_reason": ERROR, "drop_step": "judge"})
            elif judged["judge_score"] < self.cfg.threshold:
                rejected.append({**judged, "drop_reason": LOW, "drop_step": "judge"})
            else:
                kept.append(judged)
        paths = write_shards(kept, outputs["kept"], features=CURATED_FEATURES)
        write_shards(rejected, outputs["rejected"], features=CURATED_FEATURES)
        pairs = None
        if self.cfg.pairs is not None:
            pairs = preference_pairs(kept + rejected, self.cfg.threshold, self.cfg.pairs.min_margin)
            write_shards(pairs, outputs["preference"], features=PREFERENCE_FEATURES)
        return StageResult(
            rows_in=len(rows),
            rows_out=len(kept),
            output_fingerprint=fingerprint_files(paths),
            drops=dict(Counter(r["drop_reason"] for r in rejected)),
            stats={
                "threshold": self.cfg.threshold,
                "preference_pairs": len(pairs) if pairs is not None else None,
                **_stats(kept, rejected, verdicts.values(), seconds, work_dir, model),
            },
        )

    def _judge(self, ctx: RunContext, work_dir: Path) -> tuple[TeacherEndpoint, str]:
        """The endpoint that judges and the model name its requests carry."""
        if self.cfg.endpoint is None:
            return ctx.teacher, served_name(self.recipe.teacher)
        judge = TeacherConfig(model=self.cfg.model, endpoint=self.cfg.endpoint, recovery=self.recipe.teacher.recovery)
        return TeacherEndpoint(judge, work_dir / "judge.log", ctx.log, role="judge"), self.cfg.model

    def _config(self, model: str, url: str) -> InferenceConfig:
        cfg = self.cfg
        params = {"temperature": cfg.temperature, "max_tokens": cfg.max_tokens}
        return inference_config(model, url, params, cfg.max_concurrent_requests, cfg.request_timeout_s)

    def _document(self, row: dict) -> Document:
        criteria = criteria_of(row)
        meta = {
            "criteria": criteria,
            "schema": verdict_schema(criteria, self.cfg.rationale_chars),
            "attempts": self.cfg.attempts,
            "temperature": self.cfg.temperature,
        }
        # the prompt is the document's text: datatrove's readers skip a document without one
        return Document(text=judge_prompt(row), id=row["id"], metadata=meta)

    def summary(self, manifest: Manifest, outputs: dict[str, Path], console: Console) -> None:
        stats = manifest.stats
        console.print(
            f"judged by {stats['judge_model']}: kept {manifest.rows_out} of {manifest.rows_in} rows "
            f"(threshold {numbers.metric(self.cfg.threshold)}); mean score kept "
            f"{numbers.metric(stats['mean_score_kept'])}, rejected {numbers.metric(stats['mean_score_rejected'])}; "
            f"{numbers.metric(stats['judge_tokens_per_second'])} verdict tokens/s"
        )
        if manifest.drops:
            console.print(f"rejected: {manifest.drops} (rows: {outputs['rejected']})")
        if stats.get("preference_pairs") is not None:
            console.print(f"preference pairs: {stats['preference_pairs']} ({outputs['preference']})")


async def ask_verdict(document: Document, generate: GenerateFunction, *, on_done: OnDone) -> dict[str, Any]:
    """A datatrove rollout: the verdict on one row, asked up to `attempts` times until one reads. Each retry
    is a new request (its own `user` tag, so datatrove's request cache does not answer it with the failed
    one) sampled at RETRY_TEMPERATURE at least. Returns the scores and rationale, or the last error."""
    started, meta = time.time(), document.metadata
    tokens, errors = 0, []
    for attempt in range(meta["attempts"]):
        payload = {
            "messages": [{"role": "user", "content": document.text}],
            "user": f"{document.id}/verdict{attempt}",
            "response_format": {"type": "json_schema", "json_schema": {"name": "verdict", "schema": meta["schema"]}},
        }
        if attempt:
            payload["temperature"] = max(meta["temperature"], RETRY_TEMPERATURE)
        try:
            result = await generate(payload)
        except InferenceError as exc:  # the endpoint answered with an error, or garbage that is not a response
            errors.append(f"request failed: {str(exc.error)[:200]}")
            continue
        tokens += result.usage.get("completion_tokens", 0)
        if result.finish_reason == "length":
            errors.append("the verdict ran past max_tokens")
            continue
        try:
            verdict = read_verdict(result.text, meta["criteria"])
        except ValueError as exc:
            errors.append(f"unreadable verdict: {exc}")
            continue
        on_done(tokens, started)
        return {**verdict, "attempts": attempt + 1, "tokens": tokens}
    on_done(tokens, started)
    return {"error": errors[-1], "attempts": meta["attempts"], "tokens": tokens}


def _verdicts(raw: Path) -> dict[str, dict[str, Any]]:
    """Row id -> its verdict, from datatrove's output documents."""
    if not raw.is_dir():
        return {}
    with datatrove_logs_to(raw.parent / "datatrove.log"):
        docs = list(JsonlReader(str(raw), compression=None).run())
    return {doc.id: doc.metadata["rollout_results"][0] for doc in docs if doc.metadata.get("rollout_results")}


def _columns(verdict: dict[str, Any], model: str) -> dict[str, Any]:
    """A row's judge columns: no score, and the error as its rationale, when the verdict never read."""
    scores = verdict.get("scores")
    return {
        "judge_scores": {name: scores.get(name) for name in JUDGE_CRITERIA} if scores else None,
        "judge_score": round(mean(scores.values()), 3) if scores else None,
        "judge_rationale": verdict.get("rationale") if scores else verdict["error"],
        "judge_model": model,
    }


def _stats(
    kept: list[dict], rejected: list[dict], verdicts, seconds: float, work_dir: Path, model: str
) -> dict[str, Any]:
    scored = [r for r in kept + rejected if r["judge_score"] is not None]
    low = [r["judge_score"] for r in rejected if r["judge_score"] is not None]
    verdicts = list(verdicts)
    tokens = sum(v["tokens"] for v in verdicts)
    criteria = sorted({name for r in scored for name in r["judge_scores"] if r["judge_scores"][name] is not None})
    return {
        "judge_model": model,
        # rows per mean score, rounded down to the half point: the distribution the report and card draw
        "score_histogram": {
            "kept": _histogram([r["judge_score"] for r in kept]),
            "rejected": _histogram(low),
        },
        "mean_score_kept": mean(r["judge_score"] for r in kept) if kept else None,
        "mean_score_rejected": mean(low) if low else None,
        "mean_by_criterion": {
            name: mean(r["judge_scores"][name] for r in scored if r["judge_scores"][name] is not None)
            for name in criteria
        },
        "kept_by_kind_language": count_groups(kept),
        "attempts": dict(Counter(str(v["attempts"]) for v in verdicts)),
        "verdict_tokens": tokens,
        "judge_seconds": round(seconds, 2),
        "judge_tokens_per_second": rate([work_dir / THROUGHPUT]),
        "judge_tokens_per_second_timeline": timeline([work_dir / THROUGHPUT]),
    }


def _histogram(scores: list[float]) -> dict[str, int]:
    counts = Counter(f"{math.floor(score * 2) / 2:.1f}" for score in scores)
    return dict(sorted(counts.items()))
