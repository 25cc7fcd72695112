"""Verifiable math: a written problem's answer line kept apart, every solution's final answer checked with
math-verify (written as fractions, LaTeX, with units, in other scripts' digits), the majority where the problem's
own answer cannot be read, curation dropping what was not verified with its reason, the student's answers checked
the same way, and (slow) the builtin teacher writing and solving problems through a real vLLM server."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from datatrove.data import Document
from rich.console import Console

from dataengine.checks.math_answer import ascii_digits, check_solutions, split_problem
from dataengine.curate.filters.decontamination import DecontaminationFilter, builtin_benchmarks, read_texts
from dataengine.curate.filters.math import MathFilter
from dataengine.generate.rollout import rollout
from dataengine.generate.seeds import expand_seeds
from dataengine.generate.stage import GenerateStage
from dataengine.recipe import parse_recipe
from dataengine.rows import read_rows
from dataengine.runner import run_recipe

RECIPE = """
name: math
pipeline: curate
teacher: {{model: builtin:smollm2-moe, builtin: {{top_k: 1}}{endpoint}}}  # the session server's (conftest.py)
generate:
  math:
    languages: [{{code: en, quota: 2}}, {{code: fr, quota: 1}}]
    rollouts: 2
    problem_max_tokens: 128
    max_tokens: 96
curate:
  decontamination: {{builtin: [humaneval, math_probe]}}
"""


def _recipe(tmp_path, endpoint: str = ""):
    return parse_recipe(RECIPE.format(endpoint=f", endpoint: {endpoint}" if endpoint else ""), base_dir=tmp_path)


@pytest.mark.parametrize(
    ("reference", "solution", "language"),
    [
        ("7", "3 + 4 = 7, so the answer is \\boxed{7}.", "en"),
        ("1/2", "Half of it: \\boxed{\\frac{1}{2}}", "en"),
        ("0.75", "The answer is 3/4", "en"),
        ("12", "She walks \\boxed{12\\text{ km}}.", "en"),
        ("12 km", "La réponse est \\boxed{12}.", "fr"),
        ("12", "الجواب هو \\boxed{١٢}", "ar"),  # Arabic-Indic digits
        ("12", "答案是 \\boxed{１２}", "zh"),  # full-width digits
        ("12", "उत्तर \\boxed{१२} है", "hi"),  # Devanagari digits
        ("0,5", "La moitié : \\boxed{0.5}", "fr"),  # a decimal comma, where the language writes one
        ("0.5", "La moitié : \\boxed{0,5}", "de"),
        ("1500", "Au total : \\boxed{1 500}", "fr"),  # thousands apart, where the language writes them so
        ("1500", "In all: \\boxed{1,500}", "en"),  # a thousands separator
        ("$(1, 2)$", "The point is \\boxed{(1,2)}", "en"),  # in English a comma stays a comma: a pair
        ("\\frac{3}{4}", "Final answer: 0.75", "en"),
    ],
)
def test_a_final_answer_written_any_of_these_ways_is_verified(reference, solution, language):
    (checked,) = check_solutions(reference, [solution], language)
    assert checked.verified and checked.reason == "matches_reference"


def test_a_wrong_or_missing_final_answer_is_not_verified_and_says_why():
    wrong, missing = check_solutions("7", ["So it is \\boxed{8}.", "I am not sure about this one."])
    assert (wrong.verified, wrong.reason, wrong.final_answer) == (False, "differs_from_reference", "8")
    assert (missing.verified, missing.reason, missing.final_answer) == (False, "no_final_answer", None)


def test_without_a_readable_reference_the_majority_of_the_solutions_decides():
    checks = check_solutions(None, ["\\boxed{٧}", "it is 7", "\\boxed{9}", "\\frac{14}{2}"])
    assert [c.verified for c in checks] == [True, True, False, True]
    assert [c.reason for c in checks] == ["matches_majority"] * 2 + ["no_reference_or_majority", "matches_majority"]
    # no majority (two against two), and a single solution is no majority
    assert not any(c.verified for c in check_solutions(None, ["\\boxed{1}", "\\boxed{1}", "\\boxed{2}", "\\boxed{2}"]))
    assert check_solutions(None, ["\\boxed{1}"])[0].reason == "no_reference_or_majority"


@pytest.mark.parametrize(
    ("written", "problem", "answer"),
    [
        (
            "Tom has 3 apples and buys 4 more. How many now?\nAnswer: 7",
            "Tom has 3 apples and buys 4 more. How many now?",
            "7",
        ),
        ("Marie a 3 pommes.\n**Réponse :** 7", "Marie a 3 pommes.", "7"),
        ("Hay 3 gatos.\nRespuesta: 3", "Hay 3 gatos.", "3"),
        ("Es sind 5 Äpfel.\nAntwort: 5", "Es sind 5 Äpfel.", "5"),
        ("У Маши 2 кота.\nОтвет: 2", "У Маши 2 кота.", "2"),
        ("小明有3个苹果。\n答案：3", "小明有3个苹果。", "3"),
        ("A problem with no answer line.", "A problem with no answer line.", None),
    ],
)
def test_the_problems_answer_line_is_kept_apart_in_every_shipped_language(written, problem, answer):
    assert split_problem(written) == (problem, answer)


def test_digits_of_other_scripts_and_decimal_commas_read_as_ascii():
    assert ascii_digits("١٢٣ ١٢ १२ 0,5 1,500 12,25", "fr") == "123 12 12 0.5 1,500 12.25"
    assert ascii_digits("0,5 (1,2) 1 500", "en") == "0,5 (1,2) 1 500"
    assert ascii_digits("1 500 et 2 000,25", "fr") == "1500 et 2000.25"


@pytest.mark.parametrize(
    ("row", "verdict"),
    [
        ({"kind": "math", "answer_verified": True, "verify_reason": "matches_reference"}, True),
        (
            {"kind": "math", "answer_verified": False, "verify_reason": "differs_from_reference"},
            (False, "differs_from_reference"),
        ),
        ({"kind": "math", "answer_verified": False, "verify_reason": "no_final_answer"}, (False, "no_final_answer")),
        ({"kind": "math", "answer_verified": True, "question_finish_reason": "length"}, (False, "problem_truncated")),
        ({"kind": "chat", "answer_verified": None}, True),
    ],
)
def test_curation_drops_math_rows_that_were_not_verified_with_their_reason(row, verdict):
    assert MathFilter().filter(Document(text="x", id="r", metadata=row)) == verdict


def test_a_problem_is_written_once_its_answer_kept_apart_and_solved_rollouts_times(tmp_path):
    recipe = _recipe(tmp_path)
    assert (recipe.generate.math.problem_max_tokens, recipe.generate.math.max_tokens) == (128, 96)
    seeds = [s for s in expand_seeds(recipe.generate, tmp_path) if s.language == "fr"]
    assert [(s.kind, s.task, s.rollouts) for s in seeds] == [("math", "math_problem", 2)]
    assert "Réponse : <le nombre>" in seeds[0].prompt
    (doc,) = GenerateStage(recipe, tmp_path).documents(seeds)
    asked = []

    async def teacher(payload):
        asked.append(payload)
        text = "Léa a 3 pommes et en achète 4. Combien en a-t-elle ?\nRéponse : 7" if len(asked) == 1 else "\\boxed{7}"
        return SimpleNamespace(text=text, finish_reason="stop", usage={"completion_tokens": 5}, reasoning="")

    result = asyncio.run(rollout(doc, teacher, on_done=lambda tokens, started: None))
    assert result["reference_answer"] == "7" and len(result["answers"]) == 2
    problem = "Léa a 3 pommes et en achète 4. Combien en a-t-elle ?"
    assert result["messages"] == [{"role": "user", "content": f"{problem}\n\n{doc.metadata['solve_instruction']}"}]
    assert "Réponse" not in result["messages"][0]["content"]  # the student never sees the answer line
    assert asked[0]["max_tokens"] == 128 and asked[1]["max_tokens"] == asked[2]["max_tokens"] == 96


def test_the_shipped_math_probe_decontaminates_a_row_that_copies_one_of_its_problems():
    probe = read_texts(builtin_benchmarks()["math_probe"], "prompt")
    assert len(probe) == 24
    check = DecontaminationFilter({"math_probe": probe}, 8)
    copied = {"messages": [{"role": "user", "content": probe[3]}, {"role": "assistant", "content": "84"}]}
    assert check.filter(Document(text="84", id="a", metadata=copied)) == (False, "contaminated")
    fresh = {"messages": [{"role": "user", "content": "How many legs do three spiders have?"}]}
    assert check.filter(Document(text="24", id="b", metadata=fresh)) is True


def test_the_students_math_answers_are_checked_against_the_problems_answer(monkeypatch):
    from dataengine.checks.sandbox import SandboxLimits
    from dataengine.train import evaluation
    from tests.tiny_models import tiny_llama, tiny_tokenizer

    said = {"p1": "So \\boxed{\\frac{14}{2}}", "p2": "It is 5.", "p3": "\\boxed{9}"}
    monkeypatch.setattr(
        evaluation, "generate_answers", lambda m, t, prompts, n, advance: [said[ms[0]["content"]] for ms, _ in prompts]
    )
    rows = [
        {
            "id": k,
            "kind": "math",
            "language": "en",
            "reference_answer": ref,
            "final_answer": final,
            "messages": [{"role": "user", "content": k}, {"role": "assistant", "content": "x"}],
        }
        for k, ref, final in [("p1", "7", "7"), ("p2", "6", "6"), ("p3", None, "9")]  # p3: the teacher's answer
    ]
    quality = evaluation.answer_quality(tiny_llama(64), tiny_tokenizer(), rows, "", 8, SandboxLimits())
    assert quality["math_rows"] == 3 and quality["math_accuracy"] == pytest.approx(2 / 3)
    assert quality["chat_rows"] == 0 and quality["language_fidelity"] is None
    teacher = evaluation.teacher_row(
        [{**r, "answer_verified": ok} for r, ok in zip(rows, [True, True, False], strict=True)],
        {"perplexity": 2.0, "answer_tokens": 3, "intervals": {"perplexity": None}},
    )
    assert teacher["math_accuracy"] == pytest.approx(2 / 3)


@pytest.mark.slow
def test_the_builtin_teacher_writes_and_solves_problems_and_curation_keeps_what_verifies(teacher_server, tmp_path):
    recipe = _recipe(tmp_path, endpoint=teacher_server.base_url)
    run_dir = tmp_path / "run"
    manifests = run_recipe(recipe, tmp_path, run_dir=run_dir, console=Console(record=True, width=200))

    generated = read_rows(run_dir / "generated")
    assert manifests["generate"].rows_in == 3 * 2
    assert generated and {r["kind"] for r in generated} == {"math"}
    for row in generated:  # each row's check is what math-verify says of its own answer
        (again,) = check_solutions(row["reference_answer"], [row["messages"][-1]["content"]])
        if row["reference_answer"] is not None:
            assert (row["answer_verified"], row["verify_reason"]) == (again.verified, again.reason)
        assert row["verify_reason"] in {
            "matches_reference",
            "differs_from_reference",
            "no_final_answer",
            "matches_majority",
            "no_reference_or_majority",
        }
    kept, rejected = read_rows(run_dir / "curated"), read_rows(run_dir / "rejected")
    assert len(kept) + len(rejected) == len(generated)
    assert all(r["answer_verified"] for r in kept)
    unverified = {r["id"] for r in generated if not r["answer_verified"]}
    by_math = {r["id"]: r["drop_reason"] for r in rejected if r["drop_step"] == "math"}
    # every unverified row is dropped (by the math filter, or by a filter that ran before it)
    assert unverified <= {r["id"] for r in rejected}
    assert all(
        reason in {"problem_truncated", "differs_from_reference", "no_final_answer", "no_reference_or_majority"}
        for reason in by_math.values()
    )
