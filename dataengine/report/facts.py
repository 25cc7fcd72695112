"""What a run folder says about the run, gathered once for the HTML report and `dataengine status`.

Everything comes from files the stages already write, found through the run folder (run_folder.py): the
manifests, the rows of generate, curate (kept and rejected) and publish, the train stage's training.json and
the evaluate stage's metrics.json. A stage that has not run (or a pipeline without it) leaves its part empty.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from dataengine.rows import answer, group, primary_language, read_parquet, read_rows
from dataengine.run_folder import METRICS_FILE, TRAINING_FILE, RunFolder
from dataengine.target.send import DEFAULT


@dataclass
class StageLine:
    stage: str
    rows_in: int | None
    rows_out: int
    seconds: float | None


@dataclass
class RunFacts:
    run_dir: Path
    name: str
    run_id: str
    stages: list[StageLine] = field(default_factory=list)
    # "kind/language" -> {step: rows}, steps in pipeline order (generated, kept, trained on, published)
    funnel: dict[str, dict[str, int]] = field(default_factory=dict)
    drops: dict[str, int] = field(default_factory=dict)  # reason -> rows, most first
    answer_chars: dict[str, list[int]] = field(default_factory=dict)  # "kept" / "rejected" -> lengths
    cluster_sizes: dict[int, int] = field(default_factory=dict)  # near-duplicate cluster size -> kept rows
    throughput: list[list[float]] = field(default_factory=list)  # [seconds, teacher tokens/s]
    tokens_per_second: float | None = None
    losses: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # phase -> (step, loss)
    student: str | None = None
    evaluation: dict | None = None  # eval/metrics.json
    teacher_quality: dict[str, float | None] = field(default_factory=dict)  # same checks on the teacher's answers

    @property
    def funnel_steps(self) -> list[str]:
        return list(dict.fromkeys(step for counts in self.funnel.values() for step in counts))


def _rows(run: RunFolder, stage: str, columns: list[str], role: str | None = None) -> list[dict] | None:
    """The rows a stage wrote (only `columns`), or None when the run has no such output."""
    folder = run.folder(stage, role)
    return read_rows(folder, columns) if folder is not None and (folder / "data").is_dir() else None


def collect(run_dir: Path) -> RunFacts:
    run = RunFolder(run_dir)
    facts = RunFacts(run_dir, run.info.get("recipe", run_dir.name), run.run_id)
    manifests = run.manifests()
    facts.stages = [
        StageLine(stage, m.rows_in, m.rows_out, (m.timings or {}).get("seconds")) for stage, m in manifests.items()
    ]
    training = run.file("train", TRAINING_FILE)
    if training is not None:
        facts.student = run.folder("train").name
    _rows_and_funnel(facts, run, training)
    if "curate" in manifests:
        facts.drops = dict(sorted(manifests["curate"].drops.items(), key=lambda kv: (-kv[1], kv[0])))
    if "generate" in manifests:
        stats = manifests["generate"].stats
        facts.throughput = stats.get("teacher_tokens_per_second_timeline") or []
        facts.tokens_per_second = stats.get("teacher_tokens_per_second")
    _training(facts, run, training)
    return facts


def _rows_and_funnel(facts: RunFacts, run: RunFolder, training: dict | None) -> None:
    quality = ["kind", "language", "messages", "tests_passed", "language_detected"]
    kept = _rows(run, "curate", ["id", "dedup_cluster_size", *quality])
    rejected = _rows(run, "curate", quality, role="rejected") or []
    generated = _rows(run, "generate", ["kind", "language"])
    steps: list[tuple[str, list[dict]]] = []
    if generated is not None:
        steps.append(("generated", generated))
    if kept is not None:
        steps.append(("kept", kept))
    kept = kept or []
    if training is not None:
        held_out = set(training["held_out_ids"])
        steps.append(("trained on", [row for row in kept if row["id"] not in held_out]))
    layout = run.folder("publish")
    if layout is not None and (layout / "data").is_dir():
        # an appending publish also holds earlier runs' rows: count this run's
        published = {row["id"] for row in read_parquet(sorted((layout / "data" / DEFAULT).glob("*.parquet")), ["id"])}
        steps.append(("published", [row for row in kept if row["id"] in published]))
    groups = sorted({group(row) for _, rows in steps for row in rows})
    for name, rows in steps:
        counts = Counter(group(row) for row in rows)
        for key in groups:
            facts.funnel.setdefault(key, {})[name] = counts.get(key, 0)
    facts.answer_chars = {"kept": [len(answer(r)) for r in kept], "rejected": [len(answer(r)) for r in rejected]}
    facts.cluster_sizes = dict(sorted(Counter(r.get("dedup_cluster_size") or 1 for r in kept).items()))
    facts.teacher_quality = _teacher_quality(kept + rejected)


def _teacher_quality(rows: list[dict]) -> dict[str, float | None]:
    """The evaluation's answer checks, applied to the teacher's answers as curation judged them: code whose
    own tests passed, chat answers detected in the language asked (over rows that reached each check)."""
    tested = [r["tests_passed"] for r in rows if r["kind"] == "code" and r.get("tests_passed") is not None]
    detected = [r for r in rows if r["kind"] == "chat" and r.get("language_detected")]
    in_language = sum(r["language_detected"] == primary_language(r["language"]) for r in detected)
    return {
        "code_pass_rate": sum(tested) / len(tested) if tested else None,
        "language_fidelity": in_language / len(detected) if detected else None,
    }


def _training(facts: RunFacts, run: RunFolder, training: dict | None) -> None:
    for phase in training["phases"] if training is not None else []:
        points = [(e["step"], e["loss"]) for e in phase["log_history"] if "loss" in e and "step" in e]
        facts.losses[phase["method"]] = points
    facts.evaluation = run.file("evaluate", METRICS_FILE)
