"""Each curation filter on hand-written positives and negatives, in several languages."""

from __future__ import annotations

import gzip
import json

import pytest
from datatrove.data import Document

from dataengine.checks.sandbox import SandboxLimits
from dataengine.curate.filters.answer import LengthFilter, RefusalFilter, TruncationFilter
from dataengine.curate.filters.code import CodeParseFilter, CodeTestsFilter
from dataengine.curate.filters.decontamination import DecontaminationFilter, builtin_benchmarks, read_texts
from dataengine.curate.filters.language import AnswerLanguageFilter, ProseQualityFilter, RepetitionFilter


def doc(answer: str, language: str = "en", kind: str = "chat", prompt: str = "question?", **meta) -> Document:
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return Document(text=answer, id="x", metadata={"language": language, "kind": kind, "messages": messages, **meta})


def verdict(result) -> str | bool:
    return result if result is True else result[1]


def test_truncation():
    f = TruncationFilter()
    assert verdict(f.filter(doc("A full answer.", finish_reason="stop"))) is True
    assert verdict(f.filter(doc("A cut", finish_reason="length"))) == "truncated"
    assert verdict(f.filter(doc("```python\nprint(1)\n", finish_reason="stop"))) == "unclosed_code_fence"
    assert verdict(f.filter(doc("```python\nprint(1)\n```", finish_reason="stop"))) is True


def test_length():
    f = LengthFilter(min_chars=10, max_chars=50)
    assert verdict(f.filter(doc("   "))) == "empty_answer"
    assert verdict(f.filter(doc("short"))) == "too_short"
    assert verdict(f.filter(doc("x" * 51))) == "too_long"
    assert verdict(f.filter(doc("just the right size"))) is True


@pytest.mark.parametrize(
    "answer, language",
    [
        ("As an AI language model, I cannot browse the internet.", "en"),
        ("I'm sorry, but I can't help with that request.", "en"),
        ("Je suis désolé, mais je ne peux pas répondre à cela.", "fr"),
        ("Como modelo de lenguaje, no tengo opiniones.", "es"),
        ("作为一个人工智能，我没有个人观点。", "zh"),
        ("Как языковая модель, я не могу иметь мнения.", "ru"),
        ("Hello! I am SmolLM, trained by Hugging Face.", "de"),  # English boilerplate in any language
    ],
)
def test_refusals_are_dropped(answer, language):
    assert verdict(RefusalFilter().filter(doc(answer, language))) == "refusal"


@pytest.mark.parametrize(
    "answer, language",
    [
        ("Photosynthesis turns light into chemical energy stored in sugar.", "en"),
        ("La photosynthèse transforme la lumière en énergie chimique.", "fr"),
        ("光合作用把光能转化为化学能。", "zh"),
    ],
)
def test_normal_answers_pass_refusal_filter(answer, language):
    assert RefusalFilter().filter(doc(answer, language)) is True


def test_extra_refusal_phrases():
    assert verdict(RefusalFilter(["as your friendly bot"]).filter(doc("As your friendly bot, no."))) == "refusal"


@pytest.mark.parametrize(
    "answer, asked, ok",
    [
        ("Photosynthesis is how plants turn sunlight, water and air into sugar and oxygen.", "en", True),
        ("La photosynthèse est le processus par lequel les plantes fabriquent leur nourriture.", "fr", True),
        ("光合作用是植物利用阳光、水和二氧化碳制造养分并释放氧气的过程。", "zh", True),
        ("Фотосинтез — это процесс, при котором растения превращают свет в энергию.", "ru", True),
        ("Photosynthesis is how plants turn sunlight, water and air into sugar and oxygen.", "fr", False),
        ("Photosynthesis is how plants turn sunlight, water and air into sugar and oxygen.", "zh", False),
        ("La photosynthèse est le processus par lequel les plantes fabriquent leur nourriture.", "es", False),
    ],
)
def test_language_filter(answer, asked, ok):
    d = doc(answer, asked)
    result = AnswerLanguageFilter(min_confidence=0.5).filter(d)
    assert (result is True) == ok
    if not ok:
        assert verdict(result) == "wrong_language"
    assert d.metadata["language_detected"] in {"en", "fr", "zh", "ru", "es"}
    assert 0.0 <= d.metadata["language_confidence"] <= 1.0


def test_language_filter_skips_code_rows():
    d = doc("def f():\n    return 1", "fr", kind="code")
    assert AnswerLanguageFilter().filter(d) is True and "language_detected" not in d.metadata


LOOP = "The answer is simple and clear. " * 40


@pytest.mark.parametrize("language", ["en", "fr", "zh"])
def test_repetition_loops_are_dropped(language):
    text = LOOP if language != "zh" else "答案很简单。" * 60
    assert RepetitionFilter().filter(doc(text, language)) is not True


def test_repetition_passes_normal_prose_and_code():
    prose = (
        "Plants capture light with chlorophyll. The energy splits water into oxygen and hydrogen. "
        "Carbon dioxide from the air is then fixed into sugars in the Calvin cycle, which feeds the plant."
    )
    assert RepetitionFilter().filter(doc(prose)) is True
    code = "x = 1\n" * 50  # repeated lines are fine in code: prose rules never judge code rows
    assert RepetitionFilter().filter(doc(code, kind="code")) is True


def test_prose_quality_on_chat_only():
    f = ProseQualityFilter(min_words=5, max_words=5000)
    symbols = "{ } ; ( ) # # # { } [ ] ; ; ; { } ( ) # # {} [] ;; {{}} ### ((( )))"
    assert f.filter(doc(symbols)) is not True  # gibberish chat answer
    assert f.filter(doc(symbols, kind="code")) is True  # the same text in a code row is not judged
    assert f.filter(doc("短い" * 3, "zh")) is True  # unspaced scripts are not judged by word rules
    fine = "Compound interest means you earn interest on the interest you already earned, so savings grow faster."
    assert f.filter(doc(fine)) is True


CODE_OK = {"code_solution": "def add(a, b):\n    return a + b", "code_tests": "assert add(1, 2) == 3"}


def test_code_parse_filter():
    f = CodeParseFilter()
    assert f.filter(doc("...", kind="code", code_parse_error=None, **CODE_OK)) is True
    assert verdict(f.filter(doc("...", kind="code", code_parse_error="missing section(s): tests"))) == "code_unparsed"
    assert f.filter(doc("prose", kind="chat", code_parse_error=None)) is True


def test_code_tests_filter_runs_the_tests():
    f = CodeTestsFilter(SandboxLimits(timeout_s=5, cpu_s=3), parallel=2)
    good = doc("...", kind="code", **CODE_OK)
    bad = doc("...", kind="code", code_solution="def add(a, b):\n    return a - b", code_tests="assert add(1, 2) == 3")
    slow = doc("...", kind="code", code_solution="def add(a, b):\n    while True: pass", code_tests="add(1, 2)")
    chat = doc("prose")
    results = f.filter_batch([good, bad, slow, chat])
    assert results[0] is True and good.metadata["tests_passed"] is True
    assert verdict(results[1]) == "code_tests_failed" and "AssertionError" in bad.metadata["test_output"]
    assert verdict(results[2]) == "code_tests_timeout" and slow.metadata["tests_passed"] is False
    assert results[3] is True and "tests_passed" not in chat.metadata


def test_decontamination_matches_8_grams_in_prompt_or_answer():
    bench = ["Write a function that returns the sum of the squares of all odd numbers in a list of integers."]
    f = DecontaminationFilter({"mini": bench}, n=8)
    leaked = doc("Here it is.", prompt="Please write a function that returns the sum of the squares of all odd numbers")
    assert verdict(f.filter(leaked)) == "contaminated" and leaked.metadata["contaminated_by"] == "mini"
    answer_leak = doc("It returns the SUM of the squares of all odd numbers in a list, as asked.")
    assert verdict(f.filter(answer_leak)) == "contaminated"
    assert f.filter(doc("A function that adds two numbers and returns the result to the caller.")) is True


def test_builtin_humaneval_is_shipped_and_read():
    path = builtin_benchmarks()["humaneval"]
    texts = read_texts(path, "prompt")
    assert len(texts) == 164 and "def has_close_elements" in texts[0]
    f = DecontaminationFilter({"humaneval": texts})
    copied = doc(texts[0], kind="code")
    assert verdict(f.filter(copied)) == "contaminated"


def test_benchmark_files_jsonl_gz_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as fh:
        fh.write(json.dumps({"question": "alpha beta"}) + "\n")
    pq.write_table(pa.table({"text": ["gamma", None]}), tmp_path / "b.parquet")
    assert read_texts(tmp_path / "b.jsonl.gz", "question") == ["alpha beta"]
    assert read_texts(tmp_path / "b.parquet", "text") == ["gamma"]
