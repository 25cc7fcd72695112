"""What the judge is asked and how its verdict is read: the rubric prompt in the row's language, the JSON
schema the verdict is held to, and the check of a verdict against it."""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import yaml

from dataengine.rows import answer, last_user_turn, primary_language

SCORES = [1, 2, 3, 4, 5]


@functools.cache
def load_rubrics() -> dict[str, dict[str, Any]]:
    """The shipped rubric per language code, and `code` for code rows."""
    return yaml.safe_load(resources.files("dataengine.judge").joinpath("data/rubric.yaml").read_text("utf-8"))


def rubric_for(row: dict) -> dict[str, Any]:
    """The rubric a row is judged by: the code rubric for code, else the one written in the row's language
    (English, naming the language asked, where none is shipped)."""
    rubrics = load_rubrics()
    if row["kind"] == "code":
        return rubrics["code"]
    code = primary_language(row["language"])
    if code in rubrics:
        return rubrics[code]
    return {**rubrics["en"], "language": row["language"]}


def judge_prompt(row: dict) -> str:
    """The judge's one user turn: the rubric, then the row's last question and its answer."""
    rubric = rubric_for(row)
    criteria = "\n".join(
        f"- {name}: {text.format(language=rubric.get('language', ''))}" for name, text in rubric["criteria"].items()
    )
    return (
        f"{rubric['intro']}\n{criteria}\n{rubric['reply']}\n\n"
        f"{rubric['question']}:\n{last_user_turn(row['messages'])}\n\n{rubric['answer']}:\n{answer(row)}"
    )


def criteria_of(row: dict) -> list[str]:
    return list(rubric_for(row)["criteria"])


def verdict_schema(criteria: list[str], rationale_chars: int) -> dict[str, Any]:
    """The verdict's JSON schema: the rationale first (the judge reasons before it scores), capped in length
    so a verdict fits its max_tokens, then an integer score of 1-5 per criterion."""
    properties: dict[str, Any] = {"rationale": {"type": "string", "maxLength": rationale_chars}}
    properties |= {name: {"type": "integer", "enum": SCORES} for name in criteria}
    return {
        "type": "object",
        "properties": properties,
        "required": ["rationale", *criteria],
        "additionalProperties": False,
    }


def read_verdict(text: str, criteria: list[str]) -> dict[str, Any]:
    """The scores and rationale in a verdict's text; raises ValueError saying what is wrong with it."""
    try:
        verdict = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at character {exc.pos})") from exc
    if not isinstance(verdict, dict):
        raise ValueError(f"a JSON {type(verdict).__name__}, not an object")
    if missing := [name for name in criteria if name not in verdict]:
        raise ValueError(f"no score for {', '.join(missing)}")
    if wrong := [name for name in criteria if verdict[name] not in SCORES or isinstance(verdict[name], bool)]:
        raise ValueError(f"scores outside 1-5: {', '.join(f'{n}={verdict[n]!r}' for n in wrong)}")
    rationale = verdict.get("rationale")
    return {
        "scores": {name: int(verdict[name]) for name in criteria},
        "rationale": rationale.strip() if isinstance(rationale, str) else "",
    }
