"""Preference pairs from the judge's verdicts: of the rollouts of one prompt, the best answer against the
worst, in TRL's conversational preference format (`prompt`, `chosen`, `rejected`)."""

from __future__ import annotations

import hashlib
import itertools
import operator
from collections.abc import Iterable, Iterator
from pathlib import Path

from datasets import Features, Value

from dataengine.rows import CURATED_FEATURES, PREFERENCE_FEATURES, prompt_key, sorted_rows

# What a pair is made from, of every judged row with a score: the score as the judge computed it (float64;
# the shards' float32 would move a mean such as 3.6 under a threshold of 3.6), and the prompt it answers.
CANDIDATE_FEATURES = Features(
    {
        **{name: CURATED_FEATURES[name] for name in ("id", "messages", "kind", "language", "tests_passed")},
        "judge_score": Value("float64"),
        "judge_model": Value("string"),
        "prompt_key": Value("string"),
    }
)


def candidate(row: dict) -> dict:
    """What `preference_pairs` reads of a judged row (a candidate reads as itself)."""
    return {name: row.get(name) for name in CANDIDATE_FEATURES if name != "prompt_key"} | {
        "prompt_key": prompt_key(row["messages"][:-1])
    }


def _rank(row: dict) -> tuple[bool, float]:
    """Code whose own tests passed beats code that failed whatever their scores; then the judge's score."""
    return (row["kind"] != "code" or row.get("tests_passed") is True, row["judge_score"])


def preference_pairs(rows: Iterable[dict], threshold: float, min_margin: float, spill: Path) -> Iterator[dict]:
    """One pair per prompt among the judged `rows` (or their candidates): its best answer (which the judge kept:
    at or over `threshold`) against its worst, where the chosen one ranks higher and their scores differ by at
    least `min_margin`. Rows without a score (judge_error) take no part. The rows are sorted by prompt through
    files under `spill`, so only one prompt's rollouts are held at once; the pairs come in (kind, language, id)
    order."""
    scored = (candidate(row) for row in rows if row.get("judge_score") is not None)
    by_prompt = sorted_rows(scored, ["prompt_key", "id"], CANDIDATE_FEATURES, spill / "candidates")
    rollouts = (list(group) for _, group in itertools.groupby(by_prompt, key=operator.itemgetter("prompt_key")))
    made = filter(None, (_pair(group, threshold, min_margin) for group in rollouts))
    yield from sorted_rows(made, ["kind", "language", "id"], PREFERENCE_FEATURES, spill / "pairs")


def _pair(rollouts: list[dict], threshold: float, min_margin: float) -> dict | None:
    ranked = sorted(rollouts, key=lambda r: (_rank(r), r["id"]), reverse=True)
    chosen, rejected = ranked[0], ranked[-1]
    margin = chosen["judge_score"] - rejected["judge_score"]
    if chosen is rejected or chosen["judge_score"] < threshold or _rank(chosen) <= _rank(rejected):
        return None
    if _rank(chosen)[0] == _rank(rejected)[0] and margin < min_margin:
        return None  # a passing test against a failing one is margin enough
    pair_id = hashlib.sha256(f"{chosen['id']}\x1f{rejected['id']}".encode()).hexdigest()[:24]
    return {
        "id": pair_id,
        "prompt": chosen["messages"][:-1],
        "chosen": chosen["messages"][-1:],
        "rejected": rejected["messages"][-1:],
        "chosen_id": chosen["id"],
        "rejected_id": rejected["id"],
        "chosen_score": chosen["judge_score"],
        "rejected_score": rejected["judge_score"],
        "kind": chosen["kind"],
        "language": chosen["language"],
        "judge_model": chosen["judge_model"],
    }
