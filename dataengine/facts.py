"""What a run folder says about the run, parsed once into typed facts that every renderer draws from: the
stage summaries (train, evaluate), `dataengine status`, report.html and the dataset card.

Everything comes from files the stages already write, found through the run folder (run_folder.py): the
manifests, the rows of generate, curate (kept and rejected), balance and publish, the train stage's
training.json, the evaluate stage's metrics.json and the route stage's map.json. A stage that has not run
(or a pipeline without it) leaves its part empty. What is counted over the rows is a query of rows/queries.py (polars
over lazy scans of the shards); how the numbers are written is numbers.py's.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from dataengine import numbers
from dataengine.manifest import Manifest
from dataengine.results import GenerateStats, JudgeStats
from dataengine.rows import frames, queries
from dataengine.run_folder import METRICS_FILE, ROUTING_MAP_FILE, TRAINING_FILE, RunFolder


@dataclass(frozen=True)
class Metric:
    key: str  # in metrics.json
    title: str
    short: str  # where a figure's panel has little room
    better: Literal["lower", "higher", "nearer the teacher"]
    scale: Literal["linear", "log", "rate"]  # of its axis in the report


# What the evaluate stage measures, in the order every renderer lists it.
METRICS = (
    Metric("kl_teacher_student", "KL(teacher ‖ student) per token", "KL(teacher ‖ student)", "lower", "linear"),
    Metric("perplexity", "perplexity on teacher answers", "perplexity", "lower", "log"),
    Metric("code_pass_rate", "code pass rate (sandbox)", "code pass rate", "higher", "rate"),
    Metric("language_fidelity", "answers in the language asked", "language fidelity", "higher", "rate"),
)
# Where the held-out rows hold math problems: the student's final answers checked as curation checked the teacher's.
MATH_METRICS = (Metric("math_accuracy", "math answers verified (math-verify)", "math accuracy", "higher", "rate"),)
# Where the held-out rows hold a thinking teacher's reasoning: the student's own, measured apart from its answer
# (whose checks above read the answer alone).
REASONING_METRICS = (
    Metric("reasoning_tokens", "reasoning tokens per answer", "reasoning tokens", "nearer the teacher", "linear"),
    Metric("reasoning_closed_rate", "reasoning closed before an answer", "reasoning closed", "higher", "rate"),
)


@dataclass(frozen=True)
class StageLine:
    stage: str
    rows_in: int | None
    rows_out: int
    seconds: float | None

    @classmethod
    def of(cls, manifest: Manifest) -> StageLine:
        return cls(manifest.stage, manifest.rows_in, manifest.rows_out, (manifest.timings or {}).get("seconds"))


@dataclass(frozen=True)
class Phase:
    """One training phase as its phase.json recorded it."""

    method: str
    steps: int
    seconds: float
    losses: list[tuple[int, float]]  # (step, loss) as the trainer logged them
    resumed_from: str | None
    # an MoE student's load: (step, each MoE layer's CV of expert load over the steps since the last log)
    expert_cv: list[tuple[int, list[float]]] = field(default_factory=list)

    @classmethod
    def of(cls, record: dict[str, Any]) -> Phase:
        losses = [(e["step"], e["loss"]) for e in record["log_history"] if "loss" in e and "step" in e]
        expert_cv = [(e["step"], e["cv"]) for e in record.get("expert_load_steps", [])]
        return cls(record["method"], record["steps"], record["seconds"], losses, record["resumed_from"], expert_cv)

    @property
    def first_loss(self) -> float | None:
        return self.losses[0][1] if self.losses else None

    @property
    def last_loss(self) -> float | None:
        return self.losses[-1][1] if self.losses else None


@dataclass(frozen=True)
class Training:
    """The train stage's training.json: how the student started, its phases, the rows it held out."""

    train_rows: int
    held_out_ids: list[str]
    phases: list[Phase]

    @classmethod
    def read(cls, path: Path | None) -> Training | None:
        if path is None or not path.is_file():
            return None
        data = json.loads(path.read_text())
        phases = [Phase.of(p) for p in data["phases"]]
        return cls(data["train_rows"], data["held_out_ids"], phases)


@dataclass(frozen=True)
class Evaluation:
    """The evaluate stage's metrics.json: each metric before and after training, on the held-out rows."""

    held_out_ids: list[str]
    before: dict[str, Any]
    after: dict[str, Any]
    teacher: dict[str, Any] | None = None  # the teacher on the same rows (train.evaluate.teacher)
    inits: dict[str, dict[str, Any]] = field(default_factory=dict)  # train.evaluate.compare_inits, untrained
    win_rate: dict[str, Any] | None = None  # with train.dpo: the judge's verdicts, the student against its SFT self

    @classmethod
    def read(cls, path: Path | None) -> Evaluation | None:
        if path is None or not path.is_file():
            return None
        data = json.loads(path.read_text())
        return cls(
            data["held_out_ids"],
            data["before"],
            data["after"],
            data.get("teacher"),
            data.get("inits", {}),
            data.get("win_rate"),
        )

    def cell(self, label: str, key: str) -> str:
        """One metric of "before", "after", "teacher" or a compared init, with its bootstrap interval when it
        has one."""
        row = {"before": self.before, "after": self.after, "teacher": self.teacher or {}, **self.inits}[label]
        return numbers.metric_interval(row.get(key), (row.get("intervals") or {}).get(key))

    @property
    def held_out_rows(self) -> int:
        return len(self.held_out_ids)

    @property
    def metrics(self) -> tuple[Metric, ...]:
        """What this evaluation measured, in order: math's and the reasoning's metrics only where the held-out
        rows had math problems or reasoning."""
        math = MATH_METRICS if self.after.get("math_rows") else ()
        return METRICS + math + (REASONING_METRICS if self.after.get("reasoning_rows") else ())

    def win_rate_line(self) -> str | None:
        """The student against itself before DPO, as the judge saw them (train.dpo), in one sentence."""
        if self.win_rate is None:
            return None
        w = self.win_rate
        unjudged = f", {w['unjudged']} unjudged" if w["unjudged"] else ""
        return (
            f"win rate against {w['against']}, judged by {w['judge_model']}: {numbers.metric(w['rate'])} "
            f"({w['wins']} won, {w['ties']} tied, {w['losses']} lost{unjudged})"
        )


@dataclass
class RunFacts:
    run_dir: Path
    name: str
    run_id: str
    stages: list[StageLine] = field(default_factory=list)
    # "kind/language" -> {step: rows}, steps in pipeline order (generated, kept, judged, balanced, trained on,
    # published)
    funnel: dict[str, dict[str, int]] = field(default_factory=dict)
    drops: dict[str, int] = field(default_factory=dict)  # reason -> rows, most first
    answer_chars: dict[str, np.ndarray] = field(default_factory=dict)  # "kept" / "rejected" -> lengths
    cluster_sizes: dict[int, int] = field(default_factory=dict)  # near-duplicate cluster size -> kept rows
    throughput: list[list[float]] = field(default_factory=list)  # [seconds, teacher tokens/s]
    tokens_per_second: float | None = None
    student: str | None = None  # its folder name
    training: Training | None = None
    evaluation: Evaluation | None = None
    routing: dict | None = None  # the route stage's map.json
    judge: JudgeStats | None = None  # the judge's model, threshold, score histograms and means
    teacher_quality: dict[str, float | None] = field(default_factory=dict)  # same checks on the teacher's answers
    # "kind/language" -> rows, mean and longest reasoning tokens of the kept rows a thinking teacher reasoned on
    reasoning: dict[str, dict[str, float]] = field(default_factory=dict)
    # "kind/language" -> assistant turns -> kept rows, for groups holding conversations of several turns
    turns: dict[str, dict[int, int]] = field(default_factory=dict)

    @property
    def funnel_steps(self) -> list[str]:
        return list(dict.fromkeys(step for counts in self.funnel.values() for step in counts))

    def teacher_figure(self, key: str) -> str:
        """The teacher's figure for a metric, written out: measured on the held-out rows by the evaluate stage
        (its perplexity on its own answers, the share of them that passed curation's checks), else curation's
        checks over all its answers; KL compares a student with it, so it has none."""
        if self.evaluation is not None and self.evaluation.teacher and key in self.evaluation.teacher:
            return self.evaluation.cell("teacher", key)
        if key not in self.teacher_quality:
            return numbers.NOT_APPLICABLE
        return numbers.metric(self.teacher_quality[key])

    def teacher_value(self, key: str) -> float | None:
        """The number behind `teacher_figure`, for a chart."""
        if self.evaluation is not None and self.evaluation.teacher and key in self.evaluation.teacher:
            return self.evaluation.teacher[key]
        return self.teacher_quality.get(key)

    @property
    def losses(self) -> dict[str, list[tuple[int, float]]]:
        """Training phase -> its (step, loss) points."""
        return {phase.method: phase.losses for phase in self.training.phases} if self.training else {}


def collect(run_dir: Path, *, rows: bool = True) -> RunFacts:
    """The run's facts; `rows=False` skips what needs the rows read (funnel, lengths, clusters, teacher
    quality), for a renderer that shows only the manifests, training and evaluation."""
    run = RunFolder(run_dir)
    facts = RunFacts(run_dir, run.info.get("recipe", run_dir.name), run.run_id)
    manifests = run.manifests()
    facts.stages = [StageLine.of(m) for m in manifests.values()]
    facts.training = Training.read(run.file("train", TRAINING_FILE))
    if facts.training is not None:
        facts.student = run.folder("train").name
    facts.evaluation = Evaluation.read(run.file("evaluate", METRICS_FILE))
    routing = run.file("route", ROUTING_MAP_FILE)
    facts.routing = json.loads(routing.read_text()) if routing is not None and routing.is_file() else None
    if rows:
        _rows_and_funnel(facts, run)
    # why rows were dropped on the way to the dataset: rows ingest could not read, curation's filters, the judge,
    # the expert-balance selection
    drops = Counter()
    for stage in ("ingest", "curate", "judge", "balance"):
        if stage in manifests:
            drops.update(manifests[stage].drops)
    facts.drops = dict(sorted(drops.items(), key=lambda kv: (-kv[1], kv[0])))
    facts.judge = JudgeStats.of(manifests.get("judge"))
    if (generated := GenerateStats.of(manifests.get("generate"))) is not None:
        facts.throughput = [list(point) for point in generated.teacher_tokens_per_second_timeline]
        facts.tokens_per_second = generated.teacher_tokens_per_second
    return facts


def _rows_and_funnel(facts: RunFacts, run: RunFolder) -> None:
    kept = _rows(run, "curate")
    rejected = _rows(run, "curate", "rejected")
    generated = _rows(run, "generate")
    steps: dict[str, pl.LazyFrame] = {}
    if generated is not None:
        steps["generated"] = queries.columns(generated, ["kind", "language"])
    selected = queries.columns(kept, ["id", "kind", "language"])  # no rows when curation has not run
    if kept is not None:
        steps["kept"] = selected
    # with curate.judge, what the later stages read is what the judge kept of them; with curate.balance, the
    # balanced selection of those
    for stage, step in (("judge", "judged"), ("balance", "balanced")):
        chosen = _rows(run, stage) if run.manifest(stage) else None
        if chosen is not None:
            selected = queries.among(selected, chosen).cache()  # the later steps count subsets of it: joined once
            steps[step] = selected
    if facts.training is not None:
        held_out = pl.LazyFrame({"id": facts.training.held_out_ids}, schema={"id": pl.String})
        steps["trained on"] = queries.without(selected, held_out)
    layout = run.folder("publish")
    if layout is not None and (layout / "data").is_dir():
        # an appending publish also holds earlier runs' rows: count this run's
        published = queries.columns(frames.scan(layout), ["id"])
        steps["published"] = queries.among(selected, published)
    facts.funnel = queries.funnel(steps)
    facts.answer_chars = {"kept": queries.answer_chars(kept), "rejected": queries.answer_chars(rejected)}
    facts.cluster_sizes = queries.cluster_sizes(kept)
    facts.teacher_quality = queries.teacher_quality(kept, rejected)
    facts.reasoning = queries.reasoning_lengths(kept)
    facts.turns = queries.conversation_turns(kept)


def _rows(run: RunFolder, stage: str, role: str | None = None) -> pl.LazyFrame | None:
    """The rows a stage wrote, lazily, or None when the run has no such output."""
    folder = run.folder(stage, role)
    return frames.scan(folder) if folder is not None and (folder / "data").is_dir() else None
