"""The judge: rubric prompts per language, verdicts read against their schema, rows routed by the threshold,
and a judge endpoint that answers garbage or is gone (a stand-in OpenAI-compatible server on loopback; the
builtin teacher judging end to end is in test_e2e_curate.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from datasets import load_dataset
from rich.console import Console

from dataengine.errors import RecipeError, StageError
from dataengine.judge.stage import ERROR, LOW, JudgeStage
from dataengine.pipeline import build_pipeline as build
from dataengine.pipeline import check_pipeline
from dataengine.publish.card import judge_section
from dataengine.recipe import parse_recipe
from dataengine.rows import CURATED_FEATURES, read_rows, write_shards
from dataengine.stage import RunContext
from dataengine.teacher.server import TeacherEndpoint, free_port
from dataengine.verdicts import RETRY_TEMPERATURE, judge_prompt, read_verdict, verdict_schema
from tests.conftest import StandinJudge

CHAT = ("helpfulness", "correctness", "instruction_following", "language")
RECIPE = """
name: judged
pipeline: {pipeline}
teacher: {{model: teacher, endpoint: "http://127.0.0.1:{port}", recovery: {{max_attempts: 1, backoff_s: 0.1}}}}
generate: {{chat: {{languages: [{{code: en, quota: 1}}]}}}}
curate: {{judge: {{{judge}}}{balance}}}
{extra}"""


def _recipe(
    base_dir: Path, port: int = 1, judge: str = "", balance: str = "", extra: str = "", pipeline: str = "curate"
):
    judge = "threshold: 3, max_concurrent_requests: 2" + (f", {judge}" if judge else "")
    text = RECIPE.format(pipeline=pipeline, port=port, judge=judge, balance=balance, extra=extra)
    text = text.replace("quota: 1}]}", "quota: 1}], rollouts: 2}") if "pairs" in judge else text
    return parse_recipe(text, base_dir=base_dir)


def _row(row_id: str, question: str, answer: str, language: str = "en", kind: str = "chat") -> dict:
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"id": row_id, "messages": messages, "kind": kind, "language": language, "topic": "t", "task": "t"}


# ------------------------------------------------------------------ the rubric and the verdict


def test_a_verdict_is_read_or_refused_with_what_is_wrong():
    good = json.dumps({"rationale": " Clear and right. ", **dict.fromkeys(CHAT, 4), "helpfulness": 5})
    assert read_verdict(good, list(CHAT)) == {
        "scores": {"helpfulness": 5, "correctness": 4, "instruction_following": 4, "language": 4},
        "rationale": "Clear and right.",
    }
    for text, reason in [
        ("The answer is good, 5/5", "not JSON"),
        ("[4, 4, 4, 4]", "a JSON list, not an object"),
        (json.dumps(dict.fromkeys(CHAT[:3], 4)), "no score for language"),
        (json.dumps({**dict.fromkeys(CHAT, 4), "correctness": 7}), "correctness=7"),
        (json.dumps({**dict.fromkeys(CHAT, 4), "language": True}), "language=True"),
        (json.dumps({**dict.fromkeys(CHAT, 4), "helpfulness": "5"}), "helpfulness='5'"),
    ]:
        with pytest.raises(ValueError, match=reason):
            read_verdict(text, list(CHAT))


def test_the_schema_asks_the_rationale_first_capped_then_every_score():
    schema = verdict_schema(list(CHAT), rationale_chars=120)
    assert list(schema["properties"]) == ["rationale", *CHAT]
    assert schema["required"] == ["rationale", *CHAT] and schema["additionalProperties"] is False
    assert schema["properties"]["rationale"]["maxLength"] == 120
    assert schema["properties"]["correctness"] == {"type": "integer", "enum": [1, 2, 3, 4, 5]}


@pytest.mark.parametrize(
    ("language", "labels"),
    [
        ("en", ("Question:", "Answer:", "written in English")),
        ("fr", ("Question :", "Réponse :", "écrite en français")),
        ("es", ("Pregunta:", "Respuesta:", "escrita en español")),
        ("de", ("Frage:", "Antwort:", "auf Deutsch geschrieben")),
        ("it", ("Domanda:", "Risposta:", "scritta in italiano")),
        ("pt-BR", ("Pergunta:", "Resposta:", "escrita em português")),
        ("ru", ("Вопрос:", "Ответ:", "«русский»")),
        ("zh", ("问题:", "回答:", "用中文写的")),
        ("sw", ("Question:", "Answer:", "written in sw")),  # no shipped rubric: English, naming the language
    ],
)
def test_the_rubric_is_written_in_the_language_of_the_row(language, labels):
    prompt = judge_prompt(_row("r", "Q?", "A.", language))
    question_label, answer_label, language_line = labels
    assert f"{question_label.rstrip(':').rstrip()}" in prompt and language_line in prompt
    assert prompt.endswith(f"{answer_label.rstrip(':').rstrip()}:\nA.") or prompt.endswith(f"{answer_label}\nA.")
    assert "tests_meaningful" not in prompt and "- language:" in prompt


def test_code_is_judged_on_its_tests_not_on_a_language():
    prompt = judge_prompt(_row("c", "Write a function.", "### Problem\n...", "python", kind="code"))
    assert "- tests_meaningful:" in prompt and "- language:" not in prompt
    assert prompt.startswith("You grade a programming answer")


# ------------------------------------------------------------------ the recipe and the pipeline


def test_a_separate_judge_needs_both_its_model_and_its_endpoint(tmp_path):
    for judge in ('model: "big-judge"', 'endpoint: "http://127.0.0.1:9"'):
        with pytest.raises(RecipeError, match="needs both `model`.*and `endpoint`"):
            _recipe(tmp_path, judge=judge)
    with pytest.raises(RecipeError, match="curate.judge.threshold"):
        _recipe(tmp_path, judge="rationale_chars: 100, threshold: 6")
    # the generate pipeline would not run the judge: its own check says so (validate, plan and run ask it)
    unused = check_pipeline(_recipe(tmp_path, pipeline="generate"), tmp_path)
    assert "curate.judge rates the curated rows: it needs pipeline curate or distill" in unused


def test_later_stages_read_what_the_judge_kept(tmp_path):
    recipe = _recipe(tmp_path, extra="route: {}\npublish: {to: out}\n")
    stages = {stage.name: stage for stage in build(recipe, tmp_path).stages}
    assert list(stages) == ["generate", "curate", "judge", "route", "publish"]
    assert stages["judge"].inputs == {"rows": "curated"}
    assert stages["route"].inputs["rows"] == "judged" and stages["publish"].inputs["rows"] == "judged"
    balanced = _recipe(tmp_path, balance=", balance: {fraction: 0.5}", extra="route: {}\n")
    stages = {stage.name: stage for stage in build(balanced, tmp_path).stages}
    assert stages["balance"].inputs["rows"] == "judged" and stages["route"].inputs["rows"] == "judged"


# ------------------------------------------------------------------ the stage against a stand-in judge


def _judge(tmp_path: Path, port: int, rows: list[dict], judge: str = ""):
    recipe = _recipe(tmp_path, port, judge=judge)
    run_dir = tmp_path / "run"
    write_shards(rows, run_dir / "curated", features=CURATED_FEATURES)
    stage = JudgeStage(recipe, tmp_path, rows_from="curated")
    teacher = TeacherEndpoint(recipe.teacher, run_dir / "teacher.log", log=lambda _: None)
    ctx = RunContext(recipe, tmp_path, run_dir, Console(file=io.StringIO()), "run-1", teacher)
    outputs = {role: run_dir / folder for role, folder in stage.outputs.items()}
    result = stage.run({"rows": run_dir / "curated"}, outputs, run_dir / ".work" / "judge", ctx)
    return result, outputs


def test_rows_are_routed_by_their_verdict_and_unreadable_ones_are_never_kept(tmp_path, judge_port):
    rows = [
        _row("good", "Rate me 5?", "Yes."),
        _row("edge", "Rate me 3?", "Yes."),  # at the threshold: kept
        _row("low", "Rate me 2?", "No."),
        _row("garbage", "garbage?", "Hm."),
        _row("broken", "broken?", "Hm."),
        _row("code", "Task 4", "### Problem", "python", kind="code"),
    ]
    result, outputs = _judge(tmp_path, judge_port, rows)
    kept, rejected = read_rows(outputs["kept"]), read_rows(outputs["rejected"])
    assert sorted(r["id"] for r in kept) == ["code", "edge", "good"]
    reasons = {r["id"]: r["drop_reason"] for r in rejected}
    assert reasons == {"low": LOW, "garbage": ERROR, "broken": ERROR}
    assert result.rows_in == 6 == result.rows_out + sum(result.drops.values())
    by_id = {r["id"]: r for r in kept + rejected}
    assert by_id["good"]["judge_score"] == 5.0 and by_id["good"]["judge_rationale"] == "ok"
    assert by_id["good"]["judge_scores"]["tests_meaningful"] is None
    assert by_id["code"]["judge_scores"]["tests_meaningful"] == 4 and by_id["code"]["judge_scores"]["language"] is None
    assert by_id["garbage"]["judge_score"] is None
    assert by_id["garbage"]["judge_rationale"].startswith("unreadable verdict: not JSON")
    assert by_id["broken"]["judge_rationale"].startswith("request failed")
    assert {r["judge_model"] for r in kept + rejected} == {"teacher"}
    # an unreadable verdict is asked again, each time as a new request sampled at RETRY_TEMPERATURE at least
    garbage = [body for body in StandinJudge.requests if "garbage" in body["messages"][0]["content"]]
    assert [body["user"] for body in garbage] == ["garbage/verdict0", "garbage/verdict1", "garbage/verdict2"]
    assert [body["temperature"] for body in garbage] == [0.0, RETRY_TEMPERATURE, RETRY_TEMPERATURE]
    assert result.stats.attempts == {"1": 4, "3": 2}
    assert result.stats.score_histogram == {"kept": {"3.0": 1, "4.0": 1, "5.0": 1}, "rejected": {"2.0": 1}}
    # both folders load with datasets, with the judge's columns
    loaded = load_dataset("parquet", data_dir=str(outputs["rejected"] / "data"), split="train")
    assert {"judge_score", "judge_scores", "judge_rationale"} <= set(loaded.column_names)

    # a rerun (after a crash, say) reads the verdicts it has: no request is sent again
    sent = len(StandinJudge.requests)
    again, _ = _judge(tmp_path, judge_port, rows)
    assert len(StandinJudge.requests) == sent and again.rows_out == 3
    # its speed is the first pass's: verdicts read back from checkpoints took no time to write
    assert again.stats.judge_tokens_per_second == result.stats.judge_tokens_per_second > 0


def test_pairs_are_made_from_what_the_judge_scored_and_its_scratch_is_removed(tmp_path, judge_port):
    rows = [
        _row("a-best", "Which?", "Rate me 5"),
        _row("a-mid", "Which?", "Rate me 4"),
        _row("a-worst", "Which?", "Rate me 2"),  # rejected (under 3) and still the pair's rejected answer
        _row("b-one", "Other?", "Rate me 4"),
        _row("b-two", "Other?", "Rate me 4"),  # no margin
        _row("c-broken", "broken?", "Hm."),  # no verdict: no part in a pair
        _row("c-good", "broken?", "Rate me 5"),
    ]
    result, outputs = _judge(tmp_path, judge_port, rows, judge="pairs: {min_margin: 1}")
    pairs = read_rows(outputs["preference"])
    assert [(p["chosen_id"], p["rejected_id"], p["chosen_score"], p["rejected_score"]) for p in pairs] == [
        ("a-best", "a-worst", 5.0, 2.0)
    ]
    assert pairs[0]["prompt"] == [{"role": "user", "content": "Which?"}] and pairs[0]["judge_model"] == "teacher"
    assert result.stats.preference_pairs == 1
    work = tmp_path / "run" / ".work" / "judge"
    assert not (work / "candidates").exists() and not (work / "sort-pairs").exists()


def test_a_judge_that_is_gone_fails_the_stage_and_keeps_nothing(tmp_path):
    port = free_port("127.0.0.1")
    with pytest.raises(StageError, match=r"did not answer after 1 attempts.*run again"):
        _judge(tmp_path, port, [_row("good", "Rate me 5?", "Yes.")])
    assert not (tmp_path / "run" / "judged" / "data").exists()


def test_the_card_shows_the_score_distribution_kept_against_rejected(tmp_path, judge_port):
    rows = [_row("a", "Rate me 5?", "Yes."), _row("b", "Rate me 4?", "Yes."), _row("c", "Rate me 1?", "No.")]
    result, _ = _judge(tmp_path, judge_port, rows)
    card = "\n".join(judge_section(result.stats))
    assert "by `teacher`" in card and "under 3 were dropped (`judge_low`)" in card
    assert "| 1.0 | 0 | 1 |" in card and "| 4.0 | 1 | 0 |" in card and "| 5.0 | 1 | 0 |" in card
    assert "Mean score of kept rows 4.5, of rejected 1;" in card
    assert judge_section(None) == []


def test_verdicts_are_joined_to_their_rows_in_id_order_once_each(tmp_path, monkeypatch):
    """The raw verdicts come per task, in the order they finished, and a chunk replayed from its checkpoint may
    be there twice: they are sorted (through spilled runs here) and joined, a row without one is missing."""
    from datatrove.data import Document
    from datatrove.pipeline.writers import JsonlWriter

    from dataengine.judge.stage import _joined
    from dataengine.rows import sort
    from dataengine.verdicts import verdicts_by_id

    monkeypatch.setattr(sort, "SPILL_ROWS", 2)

    def verdict(doc_id: str, score: int) -> Document:
        return Document(
            text="judge me", id=doc_id, metadata={"rollout_results": [{"scores": {"x": score}, "attempts": 1}]}
        )

    with JsonlWriter(str(tmp_path / "raw"), output_filename="${rank}.jsonl", compression=None) as raw:
        for rank, docs in enumerate([["e", "a", "c"], ["b", "e", "z"]]):
            for doc_id in docs:
                raw.write(verdict(doc_id, ord(doc_id)), rank=rank)
        raw.write(Document(text="judge me", id="f", metadata={}), rank=1)  # a document with no result is no verdict
    verdicts = list(verdicts_by_id(tmp_path / "raw", tmp_path / "spill"))
    assert [(doc_id, v["scores"]["x"]) for doc_id, v in verdicts] == [(i, ord(i)) for i in "abcez"]
    assert not (tmp_path / "spill").exists()
    joined = _joined(({"id": i} for i in "abdef"), iter(verdicts))
    assert [(row["id"], v and v["scores"]["x"]) for row, v in joined] == [
        ("a", ord("a")),
        ("b", ord("b")),
        ("d", None),
        ("e", ord("e")),
        ("f", None),
    ]
