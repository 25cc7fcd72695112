"""judge: a model (the run's teacher, or a separate judge endpoint) rates every row curation kept against a
rubric, under a JSON schema. Rows whose mean score is under `curate.judge.threshold` are rejected with
`judge_low`; rows without a readable verdict after `attempts` requests with `judge_error`.

The verdicts are requested through datatrove's InferenceRunner, like generation: each row is a document,
finished verdicts are checkpointed in `.work/judge/`, and a rerun asks only for the rest.
"""

from __future__ import annotations

import contextlib
import math
import shutil
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean
from typing import Any

from datasets import Features
from rich.console import Console

from dataengine import numbers
from dataengine.errors import StageError
from dataengine.judge.pairs import CANDIDATE_FEATURES, candidate, preference_pairs
from dataengine.manifest import Manifest, fingerprint_files
from dataengine.recipe import JudgeConfig, Recipe
from dataengine.results import JudgeStats
from dataengine.rows import (
    CURATED_FEATURES,
    PREFERENCE_FEATURES,
    Group,
    group_counts,
    iter_rows,
    sorted_rows,
    stage_writer,
)
from dataengine.stage import RunContext, Stage, StageResult
from dataengine.teacher.inference import run_inference
from dataengine.teacher.throughput import FOLDER as THROUGHPUT
from dataengine.teacher.throughput import rate
from dataengine.verdicts import (
    ask_verdict,
    judge_config,
    judge_endpoint,
    verdict_columns,
    verdict_document,
    verdicts_by_id,
)

LOW, ERROR = "judge_low", "judge_error"
# what a verdict's request is made of (verdicts.verdict_document)
_ASKED = ["id", "kind", "language", "messages"]


class JudgeStage(Stage):
    name = "judge"
    # the verdicts depend on the judge's block and on the teacher (who judges when no separate judge is named)
    reads = ("curate.judge", "teacher.model", "teacher.revision", "teacher.builtin")

    def __init__(self, recipe: Recipe, base_dir: Path, rows_from: str) -> None:
        self.recipe = recipe
        self.cfg: JudgeConfig = recipe.curate.judge
        self.base_dir = base_dir
        self.inputs = {"rows": rows_from}
        self.outputs = {"kept": "judged", "rejected": "judge_rejected"}
        if self.cfg.pairs is not None:
            self.outputs["preference"] = "preference"

    def outside(self) -> list[str]:
        if self.cfg.endpoint:
            return [f"asks {self.cfg.endpoint} ({self.cfg.model})"]
        urls = self.recipe.teacher.urls
        return ["asks " + (", ".join(urls) if urls else "the run's vLLM server")]

    def run(self, inputs: dict[str, Path], outputs: dict[str, Path], work_dir: Path, ctx: RunContext) -> StageResult:
        judge, model = judge_endpoint(self.recipe, ctx.teacher, work_dir / "judge.log", ctx.log)
        seconds = run_inference(
            [judge],
            # in id order, as an inference pass takes its documents
            (verdict_document(row, self.cfg) for row in self._by_id(inputs["rows"], work_dir / "sort", _ASKED)),
            work_dir,
            ask_verdict,
            lambda url: judge_config(self.cfg, model, url),
            ctx.console,
            "judging",
        )
        verdicts = verdicts_by_id(work_dir / "raw", work_dir / "sort-verdicts")
        tally = _Tally()
        candidates = work_dir / "candidates"  # of preference pairs, when the recipe asks for them
        shutil.rmtree(candidates, ignore_errors=True)  # a crashed run's
        # the rows in id order, joined with their verdicts, to the kept or the rejected ones
        with (
            stage_writer(outputs["kept"], CURATED_FEATURES) as kept,
            stage_writer(outputs["rejected"], CURATED_FEATURES) as rejected,
            stage_writer(candidates, CANDIDATE_FEATURES) if self.cfg.pairs else contextlib.nullcontext() as paired,
        ):
            for row, verdict in _joined(self._by_id(inputs["rows"], work_dir / "sort"), verdicts):
                if verdict is None:
                    tally.missing += 1
                    continue
                judged = {**row, **verdict_columns(verdict, model)}
                if judged["judge_score"] is None:
                    judged |= {"drop_reason": ERROR, "drop_step": "judge"}
                elif judged["judge_score"] < self.cfg.threshold:
                    judged |= {"drop_reason": LOW, "drop_step": "judge"}
                tally.add(judged, verdict)
                (rejected if judged.get("drop_reason") else kept).write(judged)
                if paired is not None and judged["judge_score"] is not None:
                    paired.write(candidate(judged))
            if tally.missing:  # raised inside: the shards written are removed
                raise StageError(
                    f"the judge lost {tally.missing} of {tally.rows + tally.missing} rows (see {work_dir / 'logs'}); "
                    "run again"
                )
        paths = kept.paths
        pairs = None
        if self.cfg.pairs is not None:
            spill = work_dir / "sort-pairs"
            made = preference_pairs(iter_rows(candidates), self.cfg.threshold, self.cfg.pairs.min_margin, spill)
            with stage_writer(outputs["preference"], PREFERENCE_FEATURES) as preference:
                for pair in made:
                    preference.write(pair)
            pairs = preference.rows
            # the pairs are part of what later stages see change (train's DPO reads only them)
            paths += preference.paths
            shutil.rmtree(candidates)
            shutil.rmtree(spill, ignore_errors=True)
        return StageResult(
            rows_in=tally.rows,
            rows_out=kept.rows,
            output_fingerprint=fingerprint_files(paths),
            drops=dict(tally.drops),
            stats=JudgeStats(
                threshold=self.cfg.threshold, preference_pairs=pairs, **tally.stats(seconds, work_dir, model)
            ),
        )

    @staticmethod
    def _by_id(rows: Path, spill: Path, columns: list[str] | None = None) -> Iterator[dict]:
        """The rows in id order, all their columns or those of `columns`."""
        features = CURATED_FEATURES if columns is None else Features({c: CURATED_FEATURES[c] for c in columns})
        yield from sorted_rows(iter_rows(rows, columns), ["id"], features, spill)

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


@dataclass
class _Tally:
    """What the judge's stats count, a row at a time as the rows stream to the shards."""

    rows: int = 0
    missing: int = 0  # rows without a verdict in the pass's output
    drops: Counter = field(default_factory=Counter)
    kept_groups: Counter = field(default_factory=Counter)
    # 8 bytes a row, for the score histogram and the exact mean
    kept_scores: array = field(default_factory=lambda: array("d"))
    low_scores: array = field(default_factory=lambda: array("d"))  # rejected rows that have a score
    unjudged: int = 0
    criteria: dict[str, list[int]] = field(default_factory=dict)  # criterion -> [sum, rows], over scored rows
    attempts: Counter = field(default_factory=Counter)  # requests a verdict took -> rows
    verdict_tokens: int = 0

    def add(self, row: dict, verdict: dict) -> None:
        self.rows += 1
        self.attempts[str(verdict["attempts"])] += 1
        self.verdict_tokens += verdict["tokens"]
        score = row["judge_score"]
        if reason := row.get("drop_reason"):
            self.drops[reason] += 1
            if score is None:
                self.unjudged += 1
            else:
                self.low_scores.append(score)
        else:
            self.kept_groups[Group.of(row)] += 1
            self.kept_scores.append(score)
        if score is not None:
            for name, value in row["judge_scores"].items():
                if value is not None:
                    counted = self.criteria.setdefault(name, [0, 0])
                    counted[0], counted[1] = counted[0] + value, counted[1] + 1

    def stats(self, seconds: float, work_dir: Path, model: str) -> dict[str, Any]:
        return {
            "judge_model": model,
            # rows per mean score, rounded down to the half point: the distribution the report and card draw
            "score_histogram": {"kept": _histogram(self.kept_scores), "rejected": _histogram(self.low_scores)},
            "unjudged": self.unjudged,
            "mean_score_kept": mean(self.kept_scores) if self.kept_scores else None,
            "mean_score_rejected": mean(self.low_scores) if self.low_scores else None,
            "mean_by_criterion": {name: total / n for name, (total, n) in sorted(self.criteria.items())},
            "kept_by_kind_language": group_counts(self.kept_groups),
            "attempts": dict(self.attempts),
            "verdict_tokens": self.verdict_tokens,
            "judge_seconds": round(seconds, 2),
            "judge_tokens_per_second": rate([work_dir / THROUGHPUT]),
        }


def _joined(rows: Iterable[dict], verdicts: Iterable[tuple[str, dict]]) -> Iterator[tuple[dict, dict | None]]:
    """Each row with its verdict (None when it has none): both come in id order, so they merge as they are read."""
    pending = iter(verdicts)
    verdict_id, verdict = next(pending, (None, None))
    for row in rows:
        while verdict_id is not None and verdict_id < row["id"]:  # a verdict whose row is not among these
            verdict_id, verdict = next(pending, (None, None))
        yield row, verdict if verdict_id == row["id"] else None


def _histogram(scores: Iterable[float]) -> dict[str, int]:
    counts = Counter(f"{math.floor(score * 2) / 2:.1f}" for score in scores)
    return dict(sorted(counts.items()))
