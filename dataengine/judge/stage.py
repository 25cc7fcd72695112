"""judge: a model (the run's teacher, or a separate judge endpoint) rates every row curation kept against a
rubric, under a JSON schema. Rows whose mean score is under `curate.judge.threshold` are rejected with
`judge_low`; rows without a readable verdict after `attempts` requests with `judge_error`.

The verdicts are requested through datatrove's InferenceRunner, like generation: each row is a document,
finished verdicts are checkpointed in `.work/judge/`, and a rerun asks only for the rest.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from statistics import mean
from typing import Any

from rich.console import Console

from dataengine import numbers
from dataengine.errors import StageError
from dataengine.judge.pairs import preference_pairs
from dataengine.manifest import Manifest, fingerprint_files
from dataengine.recipe import JudgeConfig, Recipe
from dataengine.rows import CURATED_FEATURES, PREFERENCE_FEATURES, count_groups, read_rows, write_shards
from dataengine.stage import RunContext, Stage, StageResult
from dataengine.teacher.inference import run_inference
from dataengine.teacher.throughput import FOLDER as THROUGHPUT
from dataengine.teacher.throughput import rate
from dataengine.verdicts import (
    ask_verdict,
    judge_config,
    judge_endpoint,
    read_verdicts,
    verdict_columns,
    verdict_document,
)

LOW, ERROR = "judge_low", "judge_error"


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
        judge, model = judge_endpoint(self.recipe, ctx.teacher, work_dir / "judge.log", ctx.log)
        seconds = 0.0
        if rows:
            seconds = run_inference(
                [judge],
                [verdict_document(row, self.cfg) for row in rows],
                work_dir,
                ask_verdict,
                lambda url: judge_config(self.cfg, model, url),
                ctx.console,
                "judging",
            )
        verdicts = read_verdicts(work_dir / "raw")
        if missing := [row["id"] for row in rows if row["id"] not in verdicts]:
            raise StageError(f"the judge lost {len(missing)} of {len(rows)} rows (see {work_dir / 'logs'}); run again")
        kept, rejected = [], []
        for row in rows:
            judged = {**row, **verdict_columns(verdicts[row["id"]], model)}
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
            # the pairs are part of what later stages see change (train's DPO reads only them)
            paths += write_shards(pairs, outputs["preference"], features=PREFERENCE_FEATURES)
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
        "unjudged": sum(r["judge_score"] is None for r in rejected),
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
    }


def _histogram(scores: list[float]) -> dict[str, int]:
    counts = Counter(f"{math.floor(score * 2) / 2:.1f}" for score in scores)
    return dict(sorted(counts.items()))
