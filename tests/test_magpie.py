"""Prompts without seeds (Magpie): the pre-query text read off a chat template, the user turns the teacher wrote
checked and deduplicated before they are asked, and (slow) the builtin teacher writing and answering them through
a real vLLM server."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from datatrove.data import Document
from rich.console import Console
from tokenizers import processors

from dataengine.checks.questions import question_problem
from dataengine.errors import RecipeError
from dataengine.generate.magpie import magpie_documents, pre_query, select
from dataengine.generate.stage import magpie_config
from dataengine.recipe import parse_recipe
from dataengine.rows import read_rows
from dataengine.runner import check, run_recipe
from tests.tiny_models import tiny_tokenizer

RECIPE = """
name: magpie
pipeline: generate
teacher: {{model: builtin:smollm2-moe, builtin: {{top_k: 1}}{endpoint}}}  # the session server's (conftest.py)
generate:
  sampling: {{max_tokens: 32}}
  magpie:
    languages: [{{code: en, quota: 3}}, {{code: fr, quota: 2}}{extra}]
    max_tokens: 48
    oversample: 3
"""


def _recipe(tmp_path: Path, endpoint: str = "", extra: str = ""):
    text = RECIPE.format(endpoint=f", endpoint: {endpoint}" if endpoint else "", extra=extra)
    return parse_recipe(text, base_dir=tmp_path)


def test_the_pre_query_text_is_read_off_the_chat_template_with_its_end_of_turn():
    tokenizer = tiny_tokenizer()  # "<|im_start|>{role} {content}<|im_end|>" per turn
    assert pre_query(tokenizer, "be brief") == ("<|im_start|>system be brief<|im_end|><|im_start|>user ", "<|im_end|>")
    # a tokenizer that adds BOS when it encodes: the completions endpoint would add it twice
    with_bos = tiny_tokenizer()
    with_bos.bos_token = "<s>"
    bos = with_bos.convert_tokens_to_ids("<s>")
    with_bos.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", bos)]
    )
    with_bos.chat_template = "{{ bos_token }}" + with_bos.chat_template
    assert pre_query(with_bos, "be brief")[0] == "<|im_start|>system be brief<|im_end|><|im_start|>user "


def test_the_teacher_is_asked_quota_times_oversample_completions_per_language_in_id_order(tmp_path):
    recipe = _recipe(tmp_path)
    docs = magpie_documents(recipe.generate, tiny_tokenizer())
    assert len(docs) == math.ceil(3 * 3) + math.ceil(2 * 3)
    assert [d.id for d in docs] == sorted(d.id for d in docs) and len({d.id for d in docs}) == len(docs)
    french = [d for d in docs if d.metadata["language"] == "fr"]
    assert "L'utilisateur t'écrit en français" in french[0].text  # the shipped system turn sets the language
    assert not magpie_config(recipe, "http://127.0.0.1:1").use_chat  # completions, not chat


def _written(n: int, language: str, text: str, finish: str = "stop") -> Document:
    result = {"text": text, "finish_reason": finish, "tokens": 7}
    return Document(text="pre", id=f"{n:02d}", metadata={"language": language, "rollout_results": [result]})


def test_user_turns_are_checked_and_deduplicated_before_they_are_asked_and_held_to_their_quota(tmp_path):
    magpie = _recipe(tmp_path).generate.magpie
    docs = [
        _written(0, "en", "What makes the sky blue during the day?"),
        _written(1, "en", "  what makes the SKY blue   during the day?"),  # a repeat, case and spacing aside
        _written(2, "en", "Hi!"),
        _written(3, "en", "How can I help you today?"),  # the assistant's line, not a user's
        _written(4, "en", "Explain how a bicycle stays upright when it", finish="length"),
        _written(5, "en", "Write a short poem about autumn leaves."),
        _written(6, "en", "Why do cats purr when they are happy?"),
        _written(7, "en", "How do volcanoes form under the ocean?"),  # past the quota of 3
        _written(8, "fr", "Pourquoi la mer est-elle salée ?"),
        _written(8, "fr", "Pourquoi la mer est-elle salée ?"),  # a chunk a resumed pass replayed: counted once
        _written(9, "fr", "What makes the sky blue during the day?"),  # asked in French, written in English
        _written(10, "fr", "Comment les abeilles fabriquent-elles le miel ?"),
    ]
    written = select(magpie, reversed(docs))  # the pass's documents come in any order
    assert [(s.language, s.prompt) for s in written.seeds] == [
        ("en", "What makes the sky blue during the day?"),
        ("en", "Write a short poem about autumn leaves."),
        ("en", "Why do cats purr when they are happy?"),
        ("fr", "Pourquoi la mer est-elle salée ?"),
        ("fr", "Comment les abeilles fabriquent-elles le miel ?"),
    ]
    assert {(s.kind, s.task, s.rollouts) for s in written.seeds} == {("chat", "magpie", 1)}
    assert written.dropped == {
        "duplicate": 1,
        "question_empty": 1,
        "question_addresses_user": 1,
        "question_truncated": 1,
        "prompt_wrong_language": 1,
    }
    assert (written.asked, written.surplus, written.tokens) == (11, 1, 77)


def test_a_language_without_a_shipped_system_turn_needs_its_own(tmp_path):
    recipe = _recipe(tmp_path, extra=", {code: sw, quota: 1}")
    with pytest.raises(RecipeError, match=r"generate.magpie.languages\[2\]: language 'sw' has no shipped system turn"):
        check(recipe, tmp_path, "magpie.yaml")
    own = _recipe(
        tmp_path, extra=', {code: sw, quota: 1, system_prompt: "Wewe ni msaidizi. Mtumiaji anaandika kwa Kiswahili."}'
    )
    check(own, tmp_path, "magpie.yaml")
    with pytest.raises(RecipeError, match="language 'en' is listed twice"):
        _recipe(tmp_path, extra=", {code: en, quota: 1}")


@pytest.mark.slow
def test_the_builtin_teacher_writes_its_own_prompts_and_answers_those_that_pass(teacher_server, tmp_path):
    recipe = _recipe(tmp_path, endpoint=teacher_server.base_url)
    run_dir = tmp_path / "run"
    console = Console(record=True, width=200)
    manifest = run_recipe(recipe, tmp_path, run_dir=run_dir, console=console)["generate"]

    magpie = manifest.stats["magpie"]
    assert magpie["asked"] == 15 and magpie["tokens"] > 0
    assert magpie["asked"] == magpie["kept"] + sum(magpie["dropped"].values()) + magpie["surplus"]
    rows = read_rows(run_dir / "generated")
    assert len(rows) == magpie["kept"] == manifest.rows_out + manifest.drops.get("empty_question", 0) > 0
    per_language = {lang: sum(r["language"] == lang for r in rows) for lang in ("en", "fr")}
    assert per_language["en"] <= 3 and per_language["fr"] <= 2
    turns = set()
    for row in rows:
        system, user, answer = row["messages"]
        assert row["task"] == "magpie" and system["role"] == "system" and answer["role"] == "assistant"
        assert ("in English" if row["language"] == "en" else "en français") in system["content"]
        assert question_problem(user["content"], "stop", row["language"]) is None
        turns.add((row["language"], " ".join(user["content"].casefold().split())))
    assert len(turns) == len(rows)  # no prompt asked twice
    assert f"magpie: {magpie['kept']} of 15 user turns the teacher wrote were asked" in console.export_text()

    # resumed: the Magpie pass is done and is not asked again
    again = Console(record=True, width=200)
    run_recipe(recipe, tmp_path, run_dir=run_dir, console=again)
    assert "already done" in again.export_text()
