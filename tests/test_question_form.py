"""The form vLLM holds a generated question to: one line, a question mark, a length its token cap holds."""

from __future__ import annotations

import re

from dataengine.checks.question_form import question_regex


def test_a_question_is_one_line_that_ends_in_a_question_mark():
    form = question_regex("es", 96)
    assert re.fullmatch(form, "¿Cómo funciona la fotosíntesis en las plantas?")
    assert not re.fullmatch(form, "La fotosíntesis es un proceso.")  # no question mark
    assert not re.fullmatch(form, "¿Qué es?\nY además, ¿por qué?")  # two lines, two questions
    assert not re.fullmatch(form, "¿Qué?")  # too short to ask anything


def test_the_length_follows_the_token_cap():
    long = "Why " + "does the water cycle move heat " * 5 + "?"  # ~160 characters
    assert not re.fullmatch(question_regex("en", 96), long)
    assert re.fullmatch(question_regex("en", 128), long)


def test_chinese_questions_are_short_and_written_in_chinese():
    form = question_regex("zh", 96)
    assert re.fullmatch(form, "光合作用是如何进行的？")
    assert not re.fullmatch(form, "What is photosynthesis？")  # an English question asked for in Chinese
    assert not re.fullmatch(form, "光合作用" * 12 + "？")  # 48 characters: over 96 tokens of a small tokenizer


def test_languages_that_end_questions_otherwise_get_no_form():
    assert question_regex("el", 96) is None and question_regex("th", 96) is None
