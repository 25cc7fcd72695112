"""What a run folder says about the run, gathered once for the HTML report and `dataengine status`.

Everything comes from files the stages already write: manifests, the parquet rows (generated, curated,
rejected, published), `students/<name>/training.json` and `eval/metrics.json`. A stage that has not run
(or a pipeline without it) simply leaves its part empty.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from dataengine.curate.filters.language import primary
from dataengine.manifest import Manifest
from dataengine.publish.layout import DEFAULT

# where each stage writes its manifest, in pipeline order (students/<name>/ for train)
STAGE_FOLDERS = (("generate", "generated"), ("curate", "curated"), ("score", "scored"), ("train", "students/*"),
                 ("evaluate", "eval"), ("publish", "published"))  # fmt: skip


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


def _columns(data: Path, columns: list[str]) -> list[dict]:
    """Rows of every parquet shard under `data` (only `columns`, those a shard has: runs made by an older
    version may lack one)."""
    rows: list[dict] = []
    for path in sorted(data.rglob("*.parquet")) if data.is_dir() else []:
        have = [c for c in columns if c in pq.read_schema(path).names]
        rows += pq.read_table(path, columns=have).to_pylist()
    return rows


def _group(row: dict) -> str:
    return f"{row['kind']}/{row['language']}"


def _answer(row: dict) -> str:
    messages = row.get("messages") or []
    return messages[-1]["content"] if messages else ""


def collect(run_dir: Path) -> RunFacts:
    info_file = run_dir / "run.json"
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    facts = RunFacts(run_dir, info.get("recipe", run_dir.name), info.get("run_id", run_dir.name))
    manifests = {
        stage: m for stage, pattern in STAGE_FOLDERS for folder in sorted(run_dir.glob(pattern))
        if (m := Manifest.read(folder))
    }  # fmt: skip
    facts.stages = [
        StageLine(stage, m.rows_in, m.rows_out, (m.timings or {}).get("seconds")) for stage, m in manifests.items()
    ]
    training_file = next(iter(sorted((run_dir / "students").glob("*/training.json"))), None)
    training = json.loads(training_file.read_text()) if training_file is not None else None
    if training_file is not None:
        facts.student = training_file.parent.name
    _rows_and_funnel(facts, run_dir, training)
    if "curate" in manifests:
        facts.drops = dict(sorted(manifests["curate"].drops.items(), key=lambda kv: (-kv[1], kv[0])))
    if "generate" in manifests:
        stats = manifests["generate"].stats
        facts.throughput = stats.get("teacher_tokens_per_second_timeline") or []
        facts.tokens_per_second = stats.get("teacher_tokens_per_second")
    _training(facts, run_dir, training)
    return facts


def _rows_and_funnel(facts: RunFacts, run_dir: Path, training: dict | None) -> None:
    kept = _columns(run_dir / "curated" / "data", ["id", "kind", "language", "messages", "dedup_cluster_size",
                                          "tests_passed", "language_detected"])  # fmt: skip
    rejected = _columns(
        run_dir / "rejected" / "data", ["kind", "language", "messages", "tests_passed", "language_detected"]
    )
    steps: list[tuple[str, list[dict]]] = []
    if (run_dir / "generated" / "data").is_dir():
        steps.append(("generated", _columns(run_dir / "generated" / "data", ["kind", "language"])))
    if (run_dir / "curated" / "data").is_dir():
        steps.append(("kept", kept))
    if training is not None:
        held_out = set(training["held_out_ids"])
        steps.append(("trained on", [row for row in kept if row["id"] not in held_out]))
    if (run_dir / "published" / "data").is_dir():
        # an appending publish also holds earlier runs' rows: count this run's
        published = {row["id"] for row in _columns(run_dir / "published" / "data" / DEFAULT, ["id"])}
        steps.append(("published", [row for row in kept if row["id"] in published]))
    groups = sorted({_group(row) for _, rows in steps for row in rows})
    for name, rows in steps:
        counts = Counter(_group(row) for row in rows)
        for group in groups:
            facts.funnel.setdefault(group, {})[name] = counts.get(group, 0)
    facts.answer_chars = {"kept": [len(_answer(r)) for r in kept], "rejected": [len(_answer(r)) for r in rejected]}
    facts.cluster_sizes = dict(sorted(Counter(r.get("dedup_cluster_size") or 1 for r in kept).items()))
    facts.teacher_quality = _teacher_quality(kept + rejected)


def _teacher_quality(rows: list[dict]) -> dict[str, float | None]:
    """The evaluation's answer checks, applied to the teacher's answers as curation judged them: code whose
    own tests passed, chat answers detected in the language asked (over rows that reached each check)."""
    tested = [r["tests_passed"] for r in rows if r["kind"] == "code" and r.get("tests_passed") is not None]
    detected = [r for r in rows if r["kind"] == "chat" and r.get("language_detected")]
    in_language = sum(r["language_detected"] == primary(r["language"]) for r in detected)
    return {
        "code_pass_rate": sum(tested) / len(tested) if tested else None,
        "language_fidelity": in_language / len(detected) if detected else None,
    }


def _training(facts: RunFacts, run_dir: Path, training: dict | None) -> None:
    for phase in training["phases"] if training is not None else []:
        points = [(e["step"], e["loss"]) for e in phase["log_history"] if "loss" in e and "step" in e]
        facts.losses[phase["method"]] = points
    metrics = run_dir / "eval" / "metrics.json"
    if metrics.is_file():
        facts.evaluation = json.loads(metrics.read_text())
