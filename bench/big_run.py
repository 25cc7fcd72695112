"""A finished run of any size, made up in seconds: generated, curated and rejected, judged and balanced rows, a
student's held-out ids and a published dataset, each stage with its manifest, as the stages would leave them. No
teacher, no training: what the run's renderers read (`dataengine status`, the report, the card, a top-up round)
is all there.

    .venv/bin/python bench/big_run.py RUN_DIR [--rows 1000000]

Import `make_run` to make one in a bench (bench/aggregates.py) or a test (tests/test_queries.py). The rows are
made in arrow and written a batch at a time through `rows.ShardWriter`, so making a million of them holds one
batch. The same `rows` and `seed` always make the same run, whatever the machine.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from dataengine.manifest import Manifest
from dataengine.results import CurateStats, GenerateStats, JudgeStats, PublishStats, Quota
from dataengine.rows import CURATED_FEATURES, PUBLISHED_FEATURES, SAMPLE_FEATURES, ShardWriter
from dataengine.rows.shards import ROWS_PER_SHARD

BATCH = 10_000  # rows made at once: the draws depend on it, so it is fixed
RUN_ID = "big-run"
STAGES = {
    "generate": {"rows": "generated"},
    "curate": {"kept": "curated", "rejected": "rejected"},
    "judge": {"kept": "judged"},
    "balance": {"kept": "balanced"},
    "train": {"student": "students/tiny"},
    "publish": {"layout": "published"},
}
# (kind, language, share of the rows): a regional tag and a language the detector confuses, for the fidelity check
GROUPS = [("chat", "en", 0.35), ("chat", "fr", 0.2), ("chat", "pt-BR", 0.15), ("chat", "zh", 0.1)]
GROUPS += [("code", "en", 0.15), ("code", "zh", 0.05)]
DROPS = ["truncated", "near_duplicate", "refusal", "too_short", "language", "tests_failed"]
WORDS = ["the", "of", "a", "model", "answer", "expert", "route", "token", "list", "value"]
WORDS += ["héllo", "wörld", "naïve", "café", "✓", "日本語", "数据", "λ", "→", "…"]  # lengths count characters


@dataclass
class Tally:
    """What the manifests count, gathered batch by batch."""

    generated: Counter = field(default_factory=Counter)  # group -> rows
    kept: Counter = field(default_factory=Counter)
    judged: Counter = field(default_factory=Counter)
    drops: Counter = field(default_factory=Counter)
    judge_drops: Counter = field(default_factory=Counter)
    rows: dict[str, int] = field(default_factory=Counter)  # step -> rows
    held_out: list[str] = field(default_factory=list)


def _pool(rng: np.random.Generator, size: int = 4000) -> np.ndarray:
    """Answers to draw from: 0 to 240 words, some of them beyond ASCII (lengths count characters, not bytes)."""
    lengths = rng.integers(0, 240, size)
    return np.array([" ".join(rng.choice(WORDS, n)) for n in lengths], dtype=object)


def _messages(questions: np.ndarray, answers: np.ndarray, turns: np.ndarray) -> pa.Array:
    """Each row's conversation: a question and its answer (turns 2), the question alone (1), none (0) or null
    (-1)."""
    counts = np.clip(turns, 0, None)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    row = np.repeat(np.arange(len(turns)), counts)  # the row each message belongs to
    first = np.arange(offsets[-1]) == offsets[:-1][row]  # the question; the answer follows it
    roles = pa.array(np.where(first, "user", "assistant"), pa.string())
    contents = pa.array(np.where(first, questions[row], answers[row]), pa.string())
    values = pa.StructArray.from_arrays([roles, contents], ["role", "content"])
    return pa.ListArray.from_arrays(pa.array(offsets), values, mask=pa.array(turns < 0))


def _batch(rng: np.random.Generator, pool: np.ndarray, start: int, n: int) -> pa.Table:
    """`n` curated rows from row `start` on, every column a renderer reads filled, with the edge cases it meets."""
    group = rng.choice(len(GROUPS), n, p=[share for *_, share in GROUPS])
    kinds = np.array([GROUPS[g][0] for g in group], dtype=object)
    languages = np.array([GROUPS[g][1] for g in group], dtype=object)
    code = kinds == "code"
    ids = [f"r{i:08d}" for i in range(start, start + n)]
    turns = rng.choice([2, 1, 0, -1], n, p=[0.97, 0.01, 0.01, 0.01])
    questions = np.array([f"Question {i}: tell me about {WORDS[i % len(WORDS)]}." for i in range(start, start + n)])
    detected = np.array([lang.split("-")[0].lower() for lang in languages], dtype=object)
    draw = rng.random(n)
    detected[draw < 0.1] = "de"  # answered in another language
    detected[(draw >= 0.1) & (draw < 0.15)] = None  # not detected
    detected[(draw >= 0.15) & (draw < 0.2)] = ""  # detected as nothing
    passed = rng.random(n)
    tests = np.where(passed < 0.6, True, np.where(passed < 0.85, False, None))
    tests[~code] = None
    sizes = rng.choice([1, 1, 1, 1, 1, 1, 2, 3, 5, 0], n).astype(object)
    sizes[sizes == 0] = None  # a row dedup never clustered
    revision = rng.choice(["rev-1", "rev-1", "rev-1", "rev-2", None], n)
    return pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "messages": _messages(questions, pool[rng.integers(0, len(pool), n)], turns),
            "kind": pa.array(kinds, pa.string()),
            "language": pa.array(languages, pa.string()),
            "teacher_model": pa.array(["builtin:smollm2-moe"] * n, pa.string()),
            "teacher_revision": pa.array(revision, pa.string()),
            "seed": pa.array(np.arange(start, start + n)),
            "run_id": pa.array([RUN_ID] * n, pa.string()),
            "language_detected": pa.array(np.where(code, None, detected), pa.string()),
            "tests_passed": pa.array(tests, pa.bool_()),
            "dedup_cluster_size": pa.array(sizes, pa.int32()),
        }
    )


def _groups(table: pa.Table) -> Counter:
    counted = table.group_by(["kind", "language"]).aggregate([([], "count_all")]).to_pylist()
    return Counter({f"{c['kind']}/{c['language']}": c["count_all"] for c in counted})


def _writers(run: Path, shard_rows: int) -> dict[str, ShardWriter]:
    features = {
        "generated": SAMPLE_FEATURES,
        "curated": CURATED_FEATURES,
        "rejected": CURATED_FEATURES,
        "judged": CURATED_FEATURES,
        "balanced": CURATED_FEATURES,
        "published": PUBLISHED_FEATURES,
    }
    data = {step: run / step / "data" for step in features}
    data["published"] = run / "published" / "data" / "default"
    return {step: ShardWriter(data[step], "train", features[step], shard_rows) for step in features}


def _write(writers: dict[str, ShardWriter], tally: Tally, rng: np.random.Generator, rows: pa.Table) -> None:
    """One batch through the stages: 70% kept by curation, 90% of those by the judge, 80% of those balanced, of
    which 5% held out by the student and 95% published."""
    n = rows.num_rows
    kept = rng.random(n) < 0.7
    judged = kept & (rng.random(n) < 0.9)
    balanced = judged & (rng.random(n) < 0.8)
    held_out = balanced & (rng.random(n) < 0.05)
    published = balanced & (rng.random(n) < 0.95)
    reasons = rng.choice(DROPS, n, p=[0.3, 0.25, 0.15, 0.1, 0.1, 0.1])
    rejected = rows.filter(pa.array(~kept)).append_column("drop_reason", pa.array(reasons[~kept], pa.string()))
    for step, mask in (("curated", kept), ("judged", judged), ("balanced", balanced), ("published", published)):
        writers[step].write_table(rows.filter(pa.array(mask)))
        tally.rows[step] += int(mask.sum())
    writers["generated"].write_table(rows)
    writers["rejected"].write_table(rejected)
    tally.generated += _groups(rows)
    tally.kept += _groups(rows.filter(pa.array(kept)))
    tally.judged += _groups(rows.filter(pa.array(judged)))
    tally.drops.update(reasons[~kept].tolist())
    tally.judge_drops.update(rng.choice(["judge_low", "judge_error"], int((kept & ~judged).sum()), p=[0.9, 0.1]))
    tally.held_out += rows.column("id").filter(pa.array(held_out)).to_pylist()


def _earlier(writers: dict[str, ShardWriter], rows: int) -> None:
    """Rows an earlier run published to the same target: the funnel must not count them."""
    count = max(1, rows // 20)
    earlier = pa.table(
        {
            "id": pa.array([f"e{i:08d}" for i in range(count)], pa.string()),
            "kind": pa.array(["chat"] * count, pa.string()),
            "language": pa.array(["en"] * count, pa.string()),
        }
    )
    writers["published"].write_table(earlier)


def _manifest(folder: Path, stage: str, rows_in: int | None, rows_out: int, drops=None, stats=None) -> None:
    Manifest(
        stage=stage,
        config_hash="c",
        input_fingerprint="",
        output_fingerprint="o",
        rows_in=rows_in,
        rows_out=rows_out,
        drops=dict(drops or {}),
        stats=stats.model_dump() if stats is not None else {},
        timings={"seconds": 60.0},
        run_id=RUN_ID,
        recipe_hash="r",
        versions={},
    ).write(folder)


def _manifests(run: Path, tally: Tally, total: int) -> None:
    """Every stage's manifest. Curation's quota asks each chat group for 3/4 of what it generated and each code group
    for half: curation keeps about 7/10, so the chat groups are short and a top-up round asks for more there."""
    generated = dict(sorted(tally.generated.items()))
    timeline = [(60.0 * i, 20.0 + i % 3) for i in range(1, 6)]
    made = GenerateStats(
        prompts=total,
        rows_by_kind_language=generated,
        teacher_tokens_per_second=21.0,
        teacher_tokens_per_second_timeline=timeline,
    )
    _manifest(run / "generated", "generate", None, total, stats=made)
    quota = {}
    for group, rows in generated.items():
        target = rows * 3 // 4 if group.startswith("chat/") else rows // 2
        quota[group] = Quota(target=target, kept=tally.kept[group], short=max(0, target - tally.kept[group]))
    _manifest(run / "curated", "curate", total, tally.rows["curated"], tally.drops, CurateStats(quota=quota))
    judge = JudgeStats(
        judge_model="judge-model",
        threshold=3.0,
        score_histogram={"kept": {"3.0": 2, "4.5": 4}, "rejected": {"1.5": 1}},
        mean_by_criterion={"correctness": 3.5},
        kept_by_kind_language=dict(sorted(tally.judged.items())),
    )
    _manifest(run / "judged", "judge", tally.rows["curated"], tally.rows["judged"], tally.judge_drops, judge)
    unselected = {"expert_balance": tally.rows["judged"] - tally.rows["balanced"]}
    _manifest(run / "balanced", "balance", tally.rows["judged"], tally.rows["balanced"], unselected)
    student = run / "students" / "tiny"
    train_rows = tally.rows["balanced"] - len(tally.held_out)
    phase = {
        "method": "sft",
        "steps": 4,
        "seconds": 2.0,
        "resumed_from": None,
        "log_history": [{"loss": 2.0, "step": 4}],
    }
    training = {"train_rows": train_rows, "held_out_ids": tally.held_out, "phases": [phase]}
    (student / "training.json").write_text(json.dumps(training))
    _manifest(student, "train", tally.rows["balanced"], train_rows)
    published = PublishStats(
        counts={"default": {"train": tally.rows["published"]}},
        rows_added=tally.rows["published"],
        rows_total=tally.rows["published"],
        target="file:///nowhere",
        changed=True,
        files=1,
    )
    _manifest(run / "published", "publish", tally.rows["published"], tally.rows["published"], stats=published)


def make_run(run: Path, rows: int, seed: int = 0, shard_rows: int = ROWS_PER_SHARD) -> Path:
    """A finished run of `rows` generated rows in `run` (made, must not exist), shards of `shard_rows`."""
    run.mkdir(parents=True)
    info = {"run_id": RUN_ID, "recipe": "big", "created_at": "2025-01-01T00:00:00+00:00", "stages": STAGES}
    (run / "run.json").write_text(json.dumps(info))
    (run / "students" / "tiny").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    pool = _pool(rng)
    writers, tally = _writers(run, shard_rows), Tally()
    try:
        for start in range(0, rows, BATCH):
            _write(writers, tally, rng, _batch(rng, pool, start, min(BATCH, rows - start)))
        _earlier(writers, rows)
        for writer in writers.values():
            writer.close()
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    _manifests(run, tally, rows)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the run folder to make (must not exist)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    make_run(args.run, args.rows, args.seed)
    print(f"{args.rows} rows in {args.run}")


if __name__ == "__main__":
    main()
