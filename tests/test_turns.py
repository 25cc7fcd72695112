"""Conversations of several turns (generate.chat.turns): the teacher plays the user and the assistant in turn,
curation checks every assistant turn and cuts a conversation at its last good one, SFT learns every assistant
turn, and scoring, top-k distillation and evaluation read every assistant turn's tokens and no user turn's.
The slow test has the builtin teacher hold 3-turn conversations through a real vLLM server."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from datasets import Dataset
from datatrove.data import Document
from rich.console import Console

from dataengine.curate.filters.answer import RefusalFilter, TruncationFilter
from dataengine.curate.filters.question import QuestionFilter
from dataengine.curate.filters.turns import EveryTurn
from dataengine.generate.rollout import rollout
from dataengine.generate.seeds import expand_seeds
from dataengine.generate.stage import Conversation, GenerateStage
from dataengine.recipe import parse_recipe
from dataengine.rows import conversation_ids, read_rows, split_reasoning
from dataengine.runner import run_recipe
from dataengine.train.data import sft_rows, topk_rows
from dataengine.train.evaluation import answer_fit
from tests.tiny_models import tiny_llama, tiny_tokenizer

RECIPE = """
name: turns
pipeline: curate
teacher: {{model: builtin:smollm2-moe, builtin: {{top_k: 1}}{endpoint}}}  # the session server's (conftest.py)
generate:
  sampling: {{max_tokens: 32, frequency_penalty: 0.5}}
  chat:
    languages: [{{code: en, quota: 2}}, {{code: fr, quota: 1}}]
    turns: 3
    personas: {personas}
    question_max_tokens: 24   # 3 x (24 + 32) decode steps in a row: short caps, a short run
# the 135M teacher's answers are mostly cut by their cap and its questions often address the user: with those
# two filters off, the rest (refusal, repetition, language, prose) decide where a conversation is cut
curate: {{filters: {{truncated: {{enabled: false}}, question: {{enabled: false}}}}}}
"""


def _recipe(tmp_path, endpoint: str = "", personas: bool = False):
    text = RECIPE.format(endpoint=f", endpoint: {endpoint}" if endpoint else "", personas=str(personas).lower())
    return parse_recipe(text, base_dir=tmp_path)


def test_the_teacher_plays_the_user_then_answers_after_the_whole_conversation(tmp_path):
    recipe = _recipe(tmp_path, personas=True)
    seed = next(s for s in expand_seeds(recipe.generate, tmp_path) if s.language == "fr")
    (doc,) = GenerateStage(recipe, tmp_path).documents([seed])
    asked = []

    async def teacher(payload):
        asked.append(payload)
        n = len(asked)
        said = {
            1: "Pourquoi la mer est-elle salée ?",
            2: "<think>court</think>Parce que les rivières y portent du sel.",  # a thinking teacher's answer
            3: "Et pourquoi les rivières ne sont-elles pas salées ?",
            4: "Elles en portent trop peu pour qu'on le goûte.",
            5: "Question : Combien de sel y a-t-il dans la mer ?",
            6: "Environ 35 grammes par litre.",
        }[n]
        return SimpleNamespace(text=said, finish_reason="stop", usage={"completion_tokens": n}, reasoning="")

    result = asyncio.run(rollout(doc, teacher, on_done=lambda tokens, started: None))
    (answer,) = result["answers"]
    assert [f["question"] for f in answer["follow_ups"]] == [
        "Et pourquoi les rivières ne sont-elles pas salées ?",
        "Combien de sel y a-t-il dans la mer ?",  # cleaned like a first question: its label cut
    ]
    # the teacher, as the user, read the conversation so far (the answer without its reasoning), as the persona
    follow_up = asked[2]["messages"][0]["content"]
    assert "Assistant: Parce que les rivières y portent du sel." in follow_up and "<think>" not in follow_up
    assert seed.persona in follow_up and "en français" in follow_up
    # then answered after the whole conversation
    assert [m["role"] for m in asked[5]["messages"]] == ["user", "assistant", "user", "assistant", "user"]
    talk = Conversation.of(result, answer, split_reasoning(answer["text"], None, "stop"))
    assert [m["role"] for m in talk.messages] == ["user", "assistant"] * 3
    assert talk.messages[-1]["content"] == "Environ 35 grammes par litre."
    assert talk.finish_reasons == ["stop"] * 3 and talk.question_finish_reasons == ["stop"] * 3
    assert talk.question_finish_reason == "stop"  # the last question's: the row's question is its last one
    assert talk.completion_tokens == 2 + 4 + 6  # every assistant turn's


def _conversation(*turns: tuple[str, str], finishes: list[str] | None = None) -> Document:
    messages = [m for q, a in turns for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
    row = {
        "id": "c",
        "kind": "chat",
        "language": "en",
        "task": "instruct_answer",
        "instruction": "Write one question about the sea.",
        "messages": messages,
        "finish_reason": (finishes or ["stop"] * len(turns))[-1],
        "turn_finish_reasons": finishes or ["stop"] * len(turns),
        "turn_question_finish_reasons": ["stop"] * len(turns),
        "reasoning": "the last turn's",
    }
    return Document(text=messages[-1]["content"], id="c", metadata=row)


CHECKS = [("truncated", TruncationFilter()), ("refusal", RefusalFilter()), ("question", QuestionFilter(0.4))]
GOOD = ("Why is the sea salty?", "Rivers carry dissolved salt into the sea over millions of years.")


def test_a_conversation_is_cut_at_its_last_good_assistant_turn_with_the_reason_kept():
    refused = ("And what about lakes?", "I'm sorry, but I cannot help with that request.")
    doc = _conversation(GOOD, refused, ("Thanks, and rivers?", "Rivers carry little salt, so they taste fresh."))
    (out,) = EveryTurn(CHECKS).run([doc])
    row = out.metadata
    assert [m["content"] for m in row["messages"]] == list(GOOD)
    assert (row["cut_reason"], row["turns_cut"]) == ("refusal: refusal", 2)
    assert out.text == GOOD[1] and row["reasoning"] is None  # the reasoning was the last turn's
    assert row["turn_finish_reasons"] == ["stop"]


def test_a_turn_cut_off_by_its_cap_cuts_the_conversation_and_a_bad_first_turn_is_left_for_the_filters():
    cut_off = _conversation(GOOD, ("Why?", "Because the rivers"), GOOD, finishes=["stop", "length", "stop"])
    (out,) = EveryTurn(CHECKS).run([cut_off])
    assert out.metadata["cut_reason"] == "truncated: truncated" and len(out.metadata["messages"]) == 2
    # the first turn fails: the conversation is left at it, and the filters drop the row for the same reason
    first = _conversation(("How can I help you today?", "The sea is salty."), GOOD)
    (out,) = EveryTurn(CHECKS).run([first])
    assert len(out.metadata["messages"]) == 2 and out.metadata["cut_reason"] == "question: question_addresses_user"
    assert QuestionFilter(0.4).filter(out) == (False, "question_addresses_user")


def test_good_conversations_and_single_turns_pass_as_they_are():
    good = _conversation(GOOD, ("And lakes?", "Most lakes are fresh because rivers flow out of them again."))
    single = _conversation(GOOD)
    out = list(EveryTurn(CHECKS).run([good, single]))
    assert [len(d.metadata["messages"]) for d in out] == [4, 2]
    assert all("cut_reason" not in d.metadata for d in out)


CONVERSATION = [
    {"role": "user", "content": "what is one"},
    {"role": "assistant", "content": "the first value is one"},
    {"role": "user", "content": "and two"},
    {"role": "assistant", "content": "two is big"},
]


def test_sft_learns_every_assistant_turn_of_a_conversation():
    rows = Dataset.from_list([{"messages": CONVERSATION}, {"messages": CONVERSATION[:2]}])
    examples = sft_rows(rows)
    assert len(examples) == 3
    assert [e["completion"][0]["content"] for e in examples] == [
        "the first value is one",
        "two is big",
        "the first value is one",
    ]
    assert examples[1]["prompt"] == CONVERSATION[:3]


def test_scoring_and_evaluation_read_every_assistant_turn_and_no_user_turn():
    tokenizer = tiny_tokenizer()
    ids, start, mask = conversation_ids(tokenizer, CONVERSATION)
    learned = [t for t, m in zip(tokenizer.convert_ids_to_tokens(ids[start:]), mask, strict=True) if m]
    # both answers with their end of turn; not the user's "and two" between them
    assert learned == ["the", "first", "value", "is", "one", "<|im_end|>", "two", "is", "big", "<|im_end|>"]
    assert conversation_ids(tokenizer, CONVERSATION[:2])[2] is None  # one turn: everything from the start

    scored = {
        "token_ids": ids,
        "completion_start": start,
        "completion_mask": mask,
        "teacher_topk_ids": [[0]] * (len(ids) - start),
        "teacher_topk_logprobs": [[0.0]] * (len(ids) - start),
    }
    (row,) = topk_rows(Dataset.from_list([scored]))
    assert row["completion_mask"] == [0] * start + mask
    model = tiny_llama(len(tokenizer))
    fit = answer_fit(model, tokenizer, [{"messages": CONVERSATION}])
    assert fit["answer_tokens"] == sum(mask) == 10
    # the scored row and the rendered one are the same tokens
    assert answer_fit(model, tokenizer, [{**scored, "messages": CONVERSATION}])["perplexity"] == pytest.approx(
        fit["perplexity"]
    )
    assert fit["answer_tokens"] < len(ids) - start  # the user turn's tokens are left out of the perplexity


@pytest.mark.slow
def test_the_builtin_teacher_holds_conversations_and_curation_checks_every_turn(teacher_server, tmp_path):
    recipe = _recipe(tmp_path, endpoint=teacher_server.base_url)
    run_dir = tmp_path / "run"
    console = Console(record=True, width=200)
    manifests = run_recipe(recipe, tmp_path, run_dir=run_dir, console=console)

    generated = read_rows(run_dir / "generated")
    assert generated
    for row in generated:
        turns = sum(m["role"] == "assistant" for m in row["messages"])
        assert 1 <= turns <= 3 and [m["role"] for m in row["messages"]] == ["user", "assistant"] * turns
        assert row["turn_finish_reasons"] is None or len(row["turn_finish_reasons"]) == turns
        assert row["finish_reason"] == (row["turn_finish_reasons"] or [row["finish_reason"]])[-1]
    assert max(sum(m["role"] == "assistant" for m in r["messages"]) for r in generated) == 3
    assert manifests["generate"].stats["turns"]
    kept, rejected = read_rows(run_dir / "curated"), read_rows(run_dir / "rejected")
    assert len(kept) + len(rejected) == len(generated)
    by_id = {r["id"]: r for r in generated}
    for row in kept:
        before = sum(m["role"] == "assistant" for m in by_id[row["id"]]["messages"])
        after = sum(m["role"] == "assistant" for m in row["messages"])
        assert after + (row["turns_cut"] or 0) == before
        assert (row["cut_reason"] is None) == (after == before)
    cut = manifests["curate"].stats.get("conversations_cut", {})
    assert sum(cut.values()) == sum(r["cut_reason"] is not None for r in kept)


def test_the_report_status_and_card_show_conversations_by_their_turns(tmp_path):
    import polars as pl

    from dataengine.facts import RunFacts
    from dataengine.publish.card import turns_section
    from dataengine.report.page import render
    from dataengine.report.terminal import show
    from dataengine.rows import queries

    one, three = CONVERSATION[:2], [*CONVERSATION, *CONVERSATION[2:]]
    rows = pl.LazyFrame({"kind": ["chat"] * 3 + ["math"], "language": ["en"] * 4, "messages": [one, one, three, one]})
    turns = queries.conversation_turns(rows)
    assert turns == {"chat/en": {1: 2, 3: 1}}  # a group of single turns only (math/en) is not listed

    facts = RunFacts(run_dir=tmp_path, name="talk", run_id="r1", turns=turns)
    console = Console(record=True, width=200)
    show(facts, console)
    shown = console.export_text()  # the title wraps at the table's width
    assert "kept conver" in shown and "│ chat/en       │ 2 │ 0 │ 1 │" in shown
    assert 'id="turns"' in render(facts) and "<td>chat/en</td><td>2</td><td>0</td><td>1</td>" in render(facts)
    card = turns_section(turns)
    assert "| chat/en | 2 | 0 | 1 |" in card and "| kind/language | 1 turn | 2 turns | 3 turns |" in card
    assert turns_section({}) == [] and 'id="turns"' not in render(RunFacts(run_dir=tmp_path, name="t", run_id="r"))


def test_the_last_follow_up_is_checked_as_the_rows_question_and_never_against_the_meta_prompt():
    doc = _conversation(GOOD, ("Write one question about the sea and its salt?", "Rivers bring salt to the sea."))
    doc.metadata["turn_question_finish_reasons"] = ["stop", "stop"]
    doc.metadata["question_finish_reason"] = "stop"
    # it shares the meta-prompt's words, but the meta-prompt wrote the first question only
    assert QuestionFilter(0.4).filter(doc) is True
    doc.metadata["question_finish_reason"] = "length"  # the follow-up cut by its cap, with no question mark
    doc.metadata["messages"][2]["content"] = "And what about the salt in"
    assert QuestionFilter(0.4).filter(doc) == (False, "question_truncated")


def test_the_first_question_of_a_conversation_is_still_checked_for_echoing_the_meta_prompt():
    echoed = ("Write one question about the sea, please?", "The sea covers most of the planet's surface.")
    (out,) = EveryTurn(CHECKS).run([_conversation(echoed, GOOD)])
    assert out.metadata["cut_reason"] == "question: question_echoes_prompt" and len(out.metadata["messages"]) == 2
    assert out.metadata["turn_question_finish_reasons"] == ["stop"]  # left at its first turn, which the filters drop
    assert QuestionFilter(0.4).filter(out) == (False, "question_echoes_prompt")
