"""Preference pairs from the judge's verdicts: of the rollouts of one prompt, the best answer against the
worst, in TRL's conversational preference format (`prompt`, `chosen`, `rejected`)."""

from __future__ import annotations

import hashlib
from collections import defaultdict

from dataengine.rows import prompt_key


def _rank(row: dict) -> tuple[bool, float]:
    """Code whose own tests passed beats code that failed whatever their scores; then the judge's score."""
    return (row["kind"] != "code" or row.get("tests_passed") is True, row["judge_score"])


def preference_pairs(rows: list[dict], threshold: float, min_margin: float) -> list[dict]:
    """One pair per prompt among the judged `rows`: its best answer (which the judge kept: at or over
    `threshold`) against its worst, where the chosen one ranks higher and their scores differ by at least
    `min_margin`. Rows without a score (judge_error) take no part."""
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if row.get("judge_score") is not None:
            by_prompt[prompt_key(row["messages"][:-1])].append(row)
    pairs = []
    for rollouts in by_prompt.values():
        ranked = sorted(rollouts, key=lambda r: (_rank(r), r["id"]), reverse=True)
        chosen, rejected = ranked[0], ranked[-1]
        margin = chosen["judge_score"] - rejected["judge_score"]
        if chosen is rejected or chosen["judge_score"] < threshold or _rank(chosen) <= _rank(rejected):
            continue
        if _rank(chosen)[0] == _rank(rejected)[0] and margin < min_margin:
            continue  # a passing test against a failing one is margin enough
        pair_id = hashlib.sha256(f"{chosen['id']}\x1f{rejected['id']}".encode()).hexdigest()[:24]
        pairs.append(
            {
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
        )
    return sorted(pairs, key=lambda p: (p["kind"], p["language"], p["id"]))
