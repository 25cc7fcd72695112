"""A judge's verdicts on answers, for the judge stage (every kept row) and the evaluation (a student's answers
against its own before DPO): the rubric prompt in the row's language, the JSON schema a verdict is held to,
the check of a verdict against it, the datatrove rollout that asks for one (again, until one reads), and
which endpoint judges.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from statistics import mean
from typing import Any

import orjson
from datasets import Features, Value
from datatrove.data import Document
from datatrove.pipeline.inference.run_inference import InferenceConfig
from datatrove.pipeline.inference.types import GenerateFunction, InferenceError
from datatrove.pipeline.readers import JsonlReader

from dataengine.data import load
from dataengine.logs import datatrove_logs_to
from dataengine.recipe import JudgeConfig, Recipe, TeacherConfig
from dataengine.rows import JUDGE_CRITERIA, answer, last_user_turn, primary_language, sorted_rows
from dataengine.teacher.inference import OnDone, inference_config
from dataengine.teacher.server import TeacherEndpoint, served_name

SCORES = [1, 2, 3, 4, 5]
# a retry must differ from the request that failed: greedy decoding would write the same verdict again
RETRY_TEMPERATURE = 0.7


@functools.cache
def load_rubrics() -> dict[str, dict[str, Any]]:
    """The shipped rubric per language code, and `code` for code rows (dataengine/data/rubric.yaml)."""
    return load("rubric.yaml")


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


# ------------------------------------------------------------------ asking


def verdict_document(row: dict, cfg: JudgeConfig, doc_id: str | None = None) -> Document:
    """The datatrove document asking for the verdict on a row (its id, unless `doc_id` is given)."""
    criteria = criteria_of(row)
    meta = {
        "criteria": criteria,
        "schema": verdict_schema(criteria, cfg.rationale_chars),
        "attempts": cfg.attempts,
        "temperature": cfg.temperature,
    }
    # the prompt is the document's text: datatrove's readers skip a document without one
    return Document(text=judge_prompt(row), id=doc_id or row["id"], metadata=meta)


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


def read_verdicts(raw: Path) -> dict[str, dict[str, Any]]:
    """Document id -> its verdict, from the documents datatrove wrote to `raw`."""
    return dict(_found(raw))


def verdicts_by_id(raw: Path, spill: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each document's id and verdict, once each and in id order, from the documents datatrove wrote to `raw`
    (a task's, in the order they finished; a chunk replayed from its checkpoint may be there twice), sorted
    through files under `spill`: to be joined with rows in id order without holding the verdicts."""
    found = ({"id": doc_id, "verdict": orjson.dumps(verdict).decode()} for doc_id, verdict in _found(raw))
    last = None
    for row in sorted_rows(found, ["id"], _SORTED_FEATURES, spill):
        if row["id"] != last:
            last = row["id"]
            yield last, orjson.loads(row["verdict"])


_SORTED_FEATURES = Features({"id": Value("string"), "verdict": Value("string")})


def _found(raw: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    if not raw.is_dir():
        return
    with datatrove_logs_to(raw.parent / "datatrove.log"):
        for doc in JsonlReader(str(raw), compression=None).run():
            if doc.metadata.get("rollout_results"):
                yield doc.id, doc.metadata["rollout_results"][0]


def mean_score(verdict: dict[str, Any]) -> float | None:
    """A verdict's mean score; None when it never read."""
    scores = verdict.get("scores")
    return round(mean(scores.values()), 3) if scores else None


def verdict_columns(verdict: dict[str, Any], model: str) -> dict[str, Any]:
    """A row's judge columns: no score, and the error as its rationale, when the verdict never read."""
    scores = verdict.get("scores")
    return {
        "judge_scores": {name: scores.get(name) for name in JUDGE_CRITERIA} if scores else None,
        "judge_score": mean_score(verdict),
        "judge_rationale": verdict.get("rationale") if scores else verdict["error"],
        "judge_model": model,
    }


# ------------------------------------------------------------------ who judges


def judge_endpoint(recipe: Recipe, teacher: TeacherEndpoint, log_path: Path, log) -> tuple[TeacherEndpoint, str]:
    """The endpoint that judges (the run's `teacher`, or curate.judge's own server, waited for with the
    teacher's recovery settings when it stops answering) and the model name its requests carry."""
    cfg = recipe.curate.judge
    if cfg.endpoint is None:
        return teacher, served_name(recipe.teacher)
    judge = TeacherConfig(model=cfg.model, endpoint=cfg.endpoint, recovery=recipe.teacher.recovery)
    return TeacherEndpoint(judge, log_path, log, role="judge"), cfg.model


def judge_config(cfg: JudgeConfig, model: str, url: str) -> InferenceConfig:
    """How the verdict requests reach the judge at `url`."""
    params = {"temperature": cfg.temperature, "max_tokens": cfg.max_tokens}
    return inference_config(model, url, params, cfg.max_concurrent_requests, cfg.request_timeout_s)
