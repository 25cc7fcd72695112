"""Seed expansion: quotas, determinism, distinct prompts, and prompts from files."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dataengine.errors import UserError
from dataengine.generate.rollout import clean_question
from dataengine.generate.seeds import expand_seeds, load_languages, load_topics
from dataengine.recipe import parse_recipe

RECIPE = """
name: t
teacher: {{model: builtin:smollm2-moe}}
generate:
  seed: {seed}
  chat:
    languages:
      - {{code: en, quota: 3}}
      - {{code: fr, quota: 5}}
      - {{code: zh, quota: 0}}
    rollouts: 2
  code: {{count: 4, rollouts: 3}}
"""


def seeds(seed: int = 0, extra: str = "", base_dir=None):
    recipe = parse_recipe(RECIPE.format(seed=seed) + extra, base_dir=base_dir)
    return list(expand_seeds(recipe.generate, base_dir))


def test_quotas_per_language_and_kind():
    out = seeds()
    counts = Counter((s.kind, s.language) for s in out)
    assert counts == {("chat", "en"): 3, ("chat", "fr"): 5, ("code", "en"): 4}
    assert {s.rollouts for s in out if s.kind == "chat"} == {2}
    assert {s.rollouts for s in out if s.kind == "code"} == {3}


def test_prompts_are_in_the_target_language_template():
    out = seeds()
    fr = [s for s in out if s.language == "fr"]
    assert all(s.prompt.startswith("Écris une seule question") for s in fr)
    assert all(s.topic in s.prompt for s in fr)


def test_personas_ask_the_questions_in_their_language_and_leave_the_topics_as_they_were(tmp_path):
    from dataengine.generate.seeds import load_personas
    from dataengine.generate.stage import GenerateStage

    plain = [s for s in seeds() if s.kind == "chat"]
    recipe = parse_recipe(RECIPE.format(seed=0).replace("rollouts: 2\n", "rollouts: 2\n    personas: true\n"))
    asked = [s for s in expand_seeds(recipe.generate, None) if s.kind == "chat"]
    assert [s.topic for s in asked] == [s.topic for s in plain]
    shipped = load_personas()
    for seed in asked:
        assert seed.persona in shipped[seed.language] and seed.persona in seed.prompt and seed.topic in seed.prompt
    assert len({s.persona for s in asked if s.language == "fr"}) == 5  # distinct while the list lasts
    assert not {s.key for s in asked} & {s.key for s in plain}
    assert [s.persona for s in expand_seeds(recipe.generate, None) if s.kind == "chat"] == [s.persona for s in asked]
    # the row records who asked
    docs = GenerateStage(recipe, tmp_path).documents(asked)
    assert [d.metadata["persona"] for d in docs] == [s.persona for s in asked]


def test_personas_need_a_place_in_an_own_instruction_and_a_shipped_list():
    from dataengine.errors import RecipeError
    from dataengine.generate.stage import GenerateStage

    own = RECIPE.replace("{{code: zh, quota: 0}}", "{{code: zh, quota: 1, instruction: '写一个关于{{topic}}的问题'}}")
    with pytest.raises(RecipeError, match=r"instruction must contain \{persona\} with personas: true, and only then"):
        parse_recipe(own.format(seed=0).replace("rollouts: 2\n", "rollouts: 2\n    personas: true\n"))
    unshipped = RECIPE.replace(
        "code: zh, quota: 0", "code: sw, quota: 1, instruction: 'Andika swali la {{persona}} kuhusu {{topic}}'"
    )
    recipe = parse_recipe(unshipped.format(seed=0).replace("rollouts: 2\n", "rollouts: 2\n    personas: true\n"))
    assert any("no shipped personas in 'sw'" in p for p in GenerateStage.check(recipe, None))


def test_expansion_is_deterministic_and_seed_dependent():
    assert [s.key for s in seeds(0)] == [s.key for s in seeds(0)]
    assert [s.topic for s in seeds(0)] != [s.topic for s in seeds(1)]


def test_prompts_are_distinct_even_beyond_the_topic_pool():
    pool = sum(len(t) for t in load_topics().values())
    extra_quota = RECIPE.replace("quota: 3", f"quota: {pool + 5}")
    recipe = parse_recipe(extra_quota.format(seed=0))
    out = list(expand_seeds(recipe.generate, None))
    en = [s for s in out if s.kind == "chat" and s.language == "en"]
    assert len(en) == pool + 5
    assert len({s.key for s in en}) == pool + 5


def test_every_shipped_language_template_has_topic_slot():
    for code, spec in load_languages().items():
        assert "{topic}" in spec["instruction"], code


def test_prompts_from_jsonl_and_parquet(tmp_path):
    (tmp_path / "p.jsonl").write_text(
        "\n".join(json.dumps({"q": f"question {i}", "lang": "de" if i % 2 else "en"}) for i in range(5)) + "\n"
    )
    pq.write_table(pa.table({"prompt": ["a", "b", "  "]}), tmp_path / "p.parquet")
    extra = (
        "  sources:\n"
        "    - {path: p.jsonl, field: q, language_field: lang, limit: 4}\n"
        "    - {path: p.parquet, language: es}\n"
    )
    out = [s for s in seeds(extra=extra, base_dir=tmp_path) if s.task == "answer"]
    assert [s.prompt for s in out] == ["question 0", "question 1", "question 2", "question 3", "a", "b"]
    assert [s.language for s in out] == ["en", "de", "en", "de", "es", "es"]


def test_a_prompt_is_asked_once_and_the_prompts_go_in_key_order(tmp_path, monkeypatch):
    from dataengine.generate.seeds import distinct
    from dataengine.rows import sort

    monkeypatch.setattr(sort, "SPILL_ROWS", 4)  # through spilled runs, as a long prompt file goes
    lines = [f"question {i % 7}" for i in range(20)] + ["question 0", "Frage", "  Frage  "]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": line}) + "\n" for line in lines))
    given = seeds(extra="  sources: [{path: p.jsonl, language: de}]\n", base_dir=tmp_path)
    out = list(distinct(given, tmp_path / "spill"))
    assert [s.key for s in out] == sorted({s.key for s in given})
    assert sorted(s.prompt for s in out if s.task == "answer") == ["Frage"] + [f"question {i}" for i in range(7)]
    assert {s.key: s for s in given} == {s.key: s for s in out}  # each prompt whole, its round and persona too
    assert not (tmp_path / "spill").exists()


def test_missing_column_is_a_clear_error(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"text": "hi"}\n')
    with pytest.raises(UserError, match="no column 'prompt'.*columns: text"):
        seeds(extra="  sources: [{path: p.jsonl}]\n", base_dir=tmp_path)


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("  What is a black hole?  ", "What is a black hole?"),
        ('Question: "Why is the sky blue?"', "Why is the sky blue?"),
        ("问题：什么是光合作用？", "什么是光合作用？"),
        ("How do vaccines work?\n\nVaccines work by ...", "How do vaccines work?"),
        ("", ""),
        ('A curious student might ask, "What exactly is DNA replication?', "What exactly is DNA replication?"),
        ('The curious student: "How does a vaccine work?"', "How does a vaccine work?"),
        (
            "Un étudiant curieux pourrait demander : « Pourquoi le ciel est-il bleu ? »",
            "Pourquoi le ciel est-il bleu ?",
        ),
        ("学生可能会问：“什么是黑洞？”", "什么是黑洞？"),
        ("Ein neugieriger Student könnte fragen: „Was ist Photosynthese?“", "Was ist Photosynthese?"),
        (
            "A curious student might ask: \"What's the difference between weather and climate?",
            "What's the difference between weather and climate?",
        ),
        ("Un étudiant pourrait demander : « Qu'est-ce que l'entropie ? »", "Qu'est-ce que l'entropie ?"),
        # a question that ends by quoting one is the question
        (
            'What does Hamlet mean when he asks, "To be or not to be?"',
            'What does Hamlet mean when he asks, "To be or not to be?',
        ),
        ('Why did Caesar say, "Et tu, Brute?"', 'Why did Caesar say, "Et tu, Brute?'),
        # a quote inside a statement is not a lead-in: left for the question filter to judge
        ('The question "Why is the sky blue?" is a classic.', 'The question "Why is the sky blue?" is a classic.'),
    ],
)
def test_clean_question(raw, clean):
    assert clean_question(raw) == clean
