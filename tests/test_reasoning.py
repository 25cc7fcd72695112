"""A thinking teacher's reasoning: read apart from the answer (a vLLM reasoning parser's `reasoning`, or inline
<think> tags), filtered with a reason for each bad case, put back before the answer for training and scoring, and
measured apart in evaluation.

The end-to-end test runs generate -> curate -> train -> evaluate -> publish against a stand-in teacher that answers
as vLLM does with `--reasoning-parser deepseek_r1`: vLLM's own request and response classes, and vLLM's own
DeepSeek-R1 parser splitting the text the stand-in "generates". The builtin 135M teacher does not reason, so this
is the machinery, not a model that thinks; the training side runs on tiny models (tests/tiny_models.py).
"""

from __future__ import annotations

import json
import threading
from http.server import ThreadingHTTPServer

import pytest
from datasets import Dataset, load_dataset
from datatrove.data import Document
from rich.console import Console

from dataengine.curate.filters.reasoning import ReasoningFilter
from dataengine.errors import StageError
from dataengine.recipe import parse_recipe
from dataengine.rows import (
    Reasoning,
    prompt_and_full_ids,
    read_rows,
    renders_reasoning,
    require_reasoning_template,
    split_reasoning,
    with_reasoning,
)
from dataengine.runner import run_recipe
from dataengine.train.data import has_reasoning, sft_rows
from tests.conftest import JsonHandler
from tests.tiny_models import WORDS, save, tiny_llama, tiny_tokenizer

# ------------------------------------------------------------------ reading the reasoning apart


@pytest.mark.parametrize(
    ("text", "served", "finish", "expected"),
    [
        # a reasoning parser's output (vLLM's `reasoning` beside `content`)
        ("The answer.", "I think.", "stop", Reasoning("I think.", "The answer.", True)),
        # the parser gives all the text as reasoning when the closing tag never came: cut by the cap
        ("", "I think and think", "length", Reasoning("I think and think", "", False)),
        # closed, then nothing: an answer missing, not an unclosed reasoning
        ("", "I think.", "stop", Reasoning("I think.", "", True)),
        # inline, both tags
        ("<think>\nI think.\n</think>\n\nThe answer.", None, "stop", Reasoning("I think.", "The answer.", True)),
        # inline, the chat template opened the block (DeepSeek-R1, Qwen3-Thinking): only the closing tag
        ("I think.\n</think>\n\nThe answer.", "", "stop", Reasoning("I think.", "The answer.", True)),
        # inline, never closed
        ("<think>\nI think and think", None, "length", Reasoning("I think and think", "", False)),
        # an empty block (thinking off in Qwen3's template) is no reasoning
        ("<think>\n\n</think>\n\nThe answer.", None, "stop", Reasoning(None, "The answer.", None)),
        # no reasoning at all: the text as it is
        ("Just the answer. ", None, "stop", Reasoning(None, "Just the answer. ", None)),
        # a tag in the middle of an answer is not reasoning, nor is a closing tag that does not stand on its line
        ("Use the <think> tag like this.", None, "stop", Reasoning(None, "Use the <think> tag like this.", None)),
        ("Close it with </think> here.", None, "stop", Reasoning(None, "Close it with </think> here.", None)),
        # a parser's reasoning of whitespace is none
        ("The answer.", " \n", "stop", Reasoning(None, "The answer.", None)),
    ],
)
def test_the_reasoning_is_read_apart_from_the_answer(text, served, finish, expected):
    assert split_reasoning(text, served, finish) == expected


def test_the_student_learns_the_reasoning_before_the_answer_in_the_form_the_recipe_states():
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert with_reasoning(messages, None, "think_tags") is messages
    tagged = with_reasoning(messages, "because", "think_tags")
    assert tagged[-1] == {"role": "assistant", "content": "<think>\nbecause\n</think>\n\na"}
    assert with_reasoning(messages, "because", "template")[-1] == {
        "role": "assistant",
        "content": "a",
        "reasoning_content": "because",
    }
    assert messages[-1] == {"role": "assistant", "content": "a"}  # the row's own messages are left alone


THINKING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} "
    "{% if m.reasoning_content is string %}<think> {{ m.reasoning_content }} </think> {% endif %}"
    "{{ m['content'] }}<|im_end|>{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)


def _thinking_tokenizer():
    tokenizer = tiny_tokenizer([*WORDS, "because"])
    tokenizer.add_tokens(["<think>", "</think>"])  # whole tokens, as in thinking models' vocabularies
    tokenizer.chat_template = THINKING_TEMPLATE
    return tokenizer


def test_the_template_form_is_refused_for_a_chat_template_that_would_drop_the_reasoning(tmp_path):
    assert not renders_reasoning(tiny_tokenizer())
    assert renders_reasoning(_thinking_tokenizer())
    tiny_tokenizer().save_pretrained(tmp_path / "plain")
    with pytest.raises(StageError, match="does not write an assistant turn's reasoning_content.*use think_tags"):
        require_reasoning_template(tmp_path / "plain", "the student")
    _thinking_tokenizer().save_pretrained(tmp_path / "thinking")
    require_reasoning_template(tmp_path / "thinking", "the student")


def test_sft_rows_carry_the_reasoning_in_the_completion_and_the_template_form_keeps_one_shape():
    rows = Dataset.from_list(
        [
            {
                "messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}],
                "reasoning": "r1",
            },
            {
                "messages": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}],
                "reasoning": None,
            },
        ]
    )
    assert has_reasoning(rows) and not has_reasoning(rows.select([1]))
    tags = sft_rows(rows, "think_tags")
    assert tags[0]["completion"] == [{"role": "assistant", "content": "<think>\nr1\n</think>\n\na1"}]
    assert tags[1]["completion"] == [{"role": "assistant", "content": "a2"}]
    assert tags[0]["prompt"] == [{"role": "user", "content": "q1"}]
    # every final turn has the field, null without reasoning: a batch of rows without reasoning has the same
    # turns as one with it (datasets writes one schema for all batches)
    template = sft_rows(rows, "template")
    assert template[0]["completion"] == [{"role": "assistant", "content": "a1", "reasoning_content": "r1"}]
    assert template[1]["completion"] == [{"role": "assistant", "content": "a2", "reasoning_content": None}]
    # rows of a run before reasoning: no column, the messages as they are
    old = Dataset.from_list([{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}])
    assert sft_rows(old)[0]["completion"] == [{"role": "assistant", "content": "a"}]


def test_scoring_and_evaluation_read_the_reasoning_tokens_as_part_of_the_answer():
    tokenizer = _thinking_tokenizer()
    messages = [{"role": "user", "content": "what is one"}, {"role": "assistant", "content": "one"}]
    plain, plain_start = prompt_and_full_ids(tokenizer, messages)
    thought, start = prompt_and_full_ids(tokenizer, with_reasoning(messages, "because", "think_tags"))
    assert start == plain_start  # the prompt is the same
    completion = tokenizer.convert_ids_to_tokens(thought[start:])
    assert completion[: completion.index("one")] == ["<think>", "because", "</think>"]
    assert len(thought) == len(plain) + 3


def test_the_score_stage_asks_the_teacher_for_the_reasoning_tokens_too(tmp_path):
    import pyarrow.parquet as pq

    from dataengine.score.stage import _write_todo

    messages = [{"role": "user", "content": "what is one"}, {"role": "assistant", "content": "one"}]
    rows = [{"id": "r", "messages": messages, "reasoning": "because"}]
    _write_todo(rows, _thinking_tokenizer(), None, 8, tmp_path / "todo.parquet", "think_tags")
    (written,) = pq.read_table(tmp_path / "todo.parquet").to_pylist()
    completion = _thinking_tokenizer().convert_ids_to_tokens(written["token_ids"][written["completion_start"] :])
    assert completion[:4] == ["<think>", "because", "</think>", "one"]


# ------------------------------------------------------------------ the filters


def _doc(answer: str, reasoning: str | None, closed: bool | None = True, tokens: int = 5, language: str = "en"):
    row = {"kind": "chat", "language": language, "reasoning": reasoning, "reasoning_closed": closed}
    return Document(text=answer, id="r", metadata={**row, "reasoning_tokens": tokens})


LONG_ANSWER = "The capital of France is Paris, a city on the Seine with about two million people."


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        (_doc("", "I think and think", closed=False), "reasoning_unclosed"),
        (_doc("  ", "I thought it through."), "answer_missing"),
        (_doc("Paris.", "I thought it through.", tokens=101), "reasoning_too_long"),
        (_doc("Paris.", "Je pense que la réponse est la capitale de la France, Paris.", language="en"), None),
        (_doc(LONG_ANSWER, f"Let me see. {LONG_ANSWER} Yes."), "answer_copied_from_reasoning"),
    ],
)
def test_each_reasoning_filter_drops_its_bad_case_with_its_reason(doc, reason):
    lenient = ReasoningFilter(max_tokens=100, same_language=False, min_copied_chars=64)
    assert lenient.filter(doc) == ((False, reason) if reason else True)


def test_the_reasoning_filters_keep_good_rows_and_rows_without_reasoning():
    strict = ReasoningFilter(max_tokens=100, same_language=True, min_copied_chars=64)
    good = "I recall that the capital city of France has been Paris for a very long time, so the answer is Paris."
    assert strict.filter(_doc(LONG_ANSWER, good, tokens=100)) is True
    assert strict.filter(_doc("", None, closed=None)) is True  # no reasoning: not this filter's business
    # a short answer repeated in the reasoning is how reasoning ends, not a copy
    assert strict.filter(_doc("Paris.", "So the answer is Paris.")) is True
    french = "Je réfléchis : la capitale de la France est Paris depuis très longtemps, donc la réponse est Paris."
    assert strict.filter(_doc(LONG_ANSWER, french)) == (False, "reasoning_wrong_language")
    assert ReasoningFilter(None, False, 64).filter(_doc("Paris.", "I thought.", tokens=10**6)) is True


# ------------------------------------------------------------------ a thinking teacher, as vLLM serves one


# what the stand-in teacher "generates" for each prompt, as raw text before vLLM's parser splits it
SAID = {
    "good": (
        "<think>\nThe user asks about the sea. The sea is salty because rivers carry salt.\n</think>\n\n"
        "The sea is salty because rivers carry dissolved salt into it over millions of years.",
        "stop",
    ),
    "opened-by-template": (
        "Rivers carry salt to the sea.\n</think>\n\nRivers carry dissolved salt into the sea, "
        "and it stays there when the water evaporates.",
        "stop",
    ),
    "unclosed": ("<think>\nHmm, let me think about this for a long time and never stop thinking", "length"),
    "no-answer": ("<think>\nI know the answer already.\n</think>", "stop"),
    "copied": (
        "<think>\nThe sea is salty because rivers carry dissolved salt into it over millions of years.\n"
        "</think>\n\nThe sea is salty because rivers carry dissolved salt into it over millions of years.",
        "stop",
    ),
    "plain": ("The sea is salty because rivers carry dissolved salt into it over the years.", "stop"),
}


class ThinkingVLLM(JsonHandler):
    """/v1/chat/completions as vLLM answers it with --reasoning-parser deepseek_r1: the request read by vLLM's
    ChatCompletionRequest, the text split by vLLM's DeepSeekR1ReasoningParser, the response built from vLLM's
    ChatCompletionResponse (reasoning tokens in the usage, as vLLM counts them with a parser). Records bodies."""

    bodies: list[dict] = []

    def do_GET(self):
        self._send(200, json.dumps({"object": "list", "data": [{"id": "teacher", "object": "model"}]}).encode())

    def do_POST(self):
        from vllm.entrypoints.openai.chat_completion.protocol import (
            ChatCompletionRequest,
            ChatCompletionResponse,
            ChatCompletionResponseChoice,
            ChatMessage,
        )
        from vllm.entrypoints.serve.engine.protocol import CompletionTokenUsageInfo, UsageInfo
        from vllm.reasoning.deepseek_r1_reasoning_parser import DeepSeekR1ReasoningParser

        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(body)
        request = ChatCompletionRequest.model_validate(body)
        text, finish = SAID[request.messages[-1]["content"]]
        parser = DeepSeekR1ReasoningParser(_thinking_tokenizer())
        reasoning, content = parser.extract_reasoning(text, request=request)
        words = len(text.split())
        message = ChatMessage(role="assistant", reasoning=reasoning, content=content)
        response = ChatCompletionResponse(
            model="teacher",
            choices=[ChatCompletionResponseChoice(index=0, message=message, finish_reason=finish)],
            usage=UsageInfo(
                prompt_tokens=5,
                completion_tokens=words,
                total_tokens=5 + words,
                # vLLM counts only tokens after an opening tag the teacher wrote: 0 when the template opened it
                completion_tokens_details=CompletionTokenUsageInfo(
                    reasoning_tokens=len(reasoning.split()) if reasoning and "<think>" in text else 0
                ),
            ),
        )
        self._send(200, response.model_dump_json().encode())


RECIPE = """
name: thinking
pipeline: distill
teacher:
  model: {teacher}
  endpoint: http://{host}:{port}
  recovery: {{max_attempts: 1, backoff_s: 0.1}}
generate:
  sampling: {{max_tokens: 64, thinking: true, thinking_token_budget: 40}}
  sources: [{{path: prompts.jsonl}}]
curate:
  filters:
    reasoning: {{max_tokens: 100}}
    length: {{enabled: false}}
    question: {{enabled: false}}
    language: {{enabled: false}}
    prose_quality: {{enabled: false}}
    repetition: {{enabled: false}}
  dedup: {{exact: false, minhash: {{enabled: false}}}}
  decontamination: {{enabled: false}}
  code: {{enabled: false}}
train:
  student: {{model: {teacher}}}
  sft: {{max_steps: 2, per_device_train_batch_size: 2}}
  evaluate: {{teacher: local, eval_fraction: 0.5, max_new_tokens: 8}}
publish: {{to: {published}}}
"""


@pytest.fixture
def thinking_teacher(request):
    host = request.param
    ThinkingVLLM.bodies = []
    httpd = ThreadingHTTPServer((host, 0), ThinkingVLLM)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield host, httpd.server_port
    httpd.shutdown()


# 127.0.0.1: datatrove posts the request itself; 127.0.0.2 is loopback too, but not a name datatrove treats as
# local, so the request goes through the OpenAI client, which keeps only the content unless the engine keeps more
@pytest.mark.parametrize("thinking_teacher", ["127.0.0.1", "127.0.0.2"], indirect=True)
def test_a_thinking_teachers_rows_are_generated_filtered_trained_on_evaluated_and_published(thinking_teacher, tmp_path):
    host, port = thinking_teacher
    teacher = save(tiny_llama(len(_thinking_tokenizer())), _thinking_tokenizer(), tmp_path / "teacher")
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in SAID))
    published = tmp_path / "published"
    text = RECIPE.format(teacher=teacher, host=host, port=port, published=published)
    recipe = parse_recipe(text, base_dir=tmp_path)
    run_dir = tmp_path / "runs" / "thinking"
    console = Console(record=True, width=200)
    manifests = run_recipe(recipe, tmp_path, run_dir=run_dir, console=console)

    # the knobs reached the teacher the way vLLM takes them
    assert {json.dumps(b.get("chat_template_kwargs")) for b in ThinkingVLLM.bodies} == {'{"enable_thinking": true}'}
    assert {b.get("thinking_token_budget") for b in ThinkingVLLM.bodies} == {40}

    generated = {r["messages"][0]["content"]: r for r in read_rows(run_dir / "generated")}
    good = generated["good"]
    assert good["reasoning"] == "The user asks about the sea. The sea is salty because rivers carry salt."
    assert good["messages"][-1]["content"].startswith("The sea is salty") and "<think>" not in json.dumps(good)
    assert good["reasoning_closed"] is True and good["reasoning_tokens"] == 14  # vLLM's count
    # vLLM counted nothing (the template opened the block): counted with the teacher's tokenizer
    assert generated["opened-by-template"]["reasoning"] == "Rivers carry salt to the sea."
    counted = _thinking_tokenizer()("Rivers carry salt to the sea.", add_special_tokens=False)["input_ids"]
    assert generated["opened-by-template"]["reasoning_tokens"] == len(counted) == 7
    assert generated["unclosed"]["reasoning_closed"] is False
    # vLLM's parser gives all the text of a teacher that did not think as reasoning, and no answer
    assert generated["plain"]["reasoning"].startswith("The sea is salty")
    assert generated["plain"]["messages"][-1]["content"] == ""
    assert manifests["generate"].stats["reasoning_rows"] == 6
    assert "reasoning: 6 of 6 answers" in console.export_text()

    rejected = {r["messages"][0]["content"]: r["drop_reason"] for r in read_rows(run_dir / "rejected")}
    assert rejected == {
        "unclosed": "reasoning_unclosed",
        "no-answer": "answer_missing",
        "copied": "answer_copied_from_reasoning",
        "plain": "answer_missing",
    }
    kept = read_rows(run_dir / "curated")
    assert sorted(r["messages"][0]["content"] for r in kept) == ["good", "opened-by-template"]

    # evaluation measured reasoning where the teacher reasoned on a held-out row
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    (held,) = [r for r in kept if r["id"] in metrics["held_out_ids"]]  # both kept rows have reasoning
    assert metrics["after"]["reasoning_rows"] == 1
    assert metrics["teacher"]["reasoning_tokens"] == held["reasoning_tokens"]
    assert metrics["teacher"]["reasoning_closed_rate"] == 1

    # the published rows keep the reasoning in its own column, and datasets reads them
    ds = load_dataset(str(published), split="train+test")
    assert len(ds) == 2 and "reasoning" in ds.column_names
    by_prompt = {r["messages"][0]["content"]: r for r in ds}
    assert by_prompt["good"]["reasoning"] == good["reasoning"]
    assert "## Reasoning" in (published / "README.md").read_text()


def test_evaluation_measures_the_students_reasoning_apart_and_checks_the_answer_after_it(monkeypatch):
    from dataengine.checks.sandbox import SandboxLimits
    from dataengine.train import evaluation

    said = {
        "a": "<think>\nwhat is one because one\n</think>\n\nThe answer is one, plainly said in English words.",
        "b": "<think>\nI keep thinking and never stop",
        "c": "The capital of France is Paris, a city of about two million people.",
    }
    monkeypatch.setattr(
        evaluation,
        "generate_answers",
        lambda model, tok, prompts, n, advance: [said[messages[0]["content"]] for messages, _ in prompts],
    )
    rows = [
        {
            "id": k,
            "kind": "chat",
            "language": "en",
            "reasoning": None if k == "c" else "r",
            "messages": [{"role": "user", "content": k}, {"role": "assistant", "content": "x"}],
        }
        for k in said
    ]
    model = tiny_llama(len(_thinking_tokenizer()))  # not asked: its answers are the ones above
    quality = evaluation.answer_quality(model, _thinking_tokenizer(), rows, "", 8, SandboxLimits())
    assert quality["reasoning_rows"] == 2 and quality["reasoning_closed_rate"] == 0.5
    samples = {s["id"]: s for s in quality["samples"]}
    assert samples["a"]["reasoning_tokens"] == 5 and samples["a"]["reasoning_closed"] is True
    # the language check read the answer after the reasoning, not the reasoning
    assert samples["a"]["answer"] == "The answer is one, plainly said in English words." and samples["a"]["ok"]
    assert samples["b"]["reasoning_closed"] is False and samples["b"]["answer"] == "" and not samples["b"]["ok"]
    assert "reasoning_tokens" not in samples["c"]  # the teacher did not reason there: nothing to measure
    assert quality["reasoning_tokens"] == (5 + samples["b"]["reasoning_tokens"]) / 2


def test_a_thinking_teacher_thinks_within_its_budget_before_a_question_and_a_question_never_written_says_why(
    tmp_path,
):
    import asyncio
    from types import SimpleNamespace

    from dataengine.generate.rollout import rollout
    from dataengine.generate.seeds import expand_seeds
    from dataengine.generate.stage import GenerateStage

    text = """
name: asks
teacher: {model: builtin:smollm2-moe}
generate:
  sampling: {thinking_token_budget: 500}
  chat: {languages: [{code: en, quota: 1}], question_max_tokens: 64}
"""
    recipe = parse_recipe(text, base_dir=tmp_path)
    (doc,) = GenerateStage(recipe, tmp_path).documents(expand_seeds(recipe.generate, tmp_path))
    replies = iter(
        [
            ("Why is the sea salty?", "The user wants a question about the sea.", "stop"),  # the parser's split
            ("The sea is salty because rivers bring salt.", "", "stop"),
        ]
    )
    asked = []

    async def teacher(payload):
        asked.append(payload)
        said, reasoning, finish = next(replies)
        return SimpleNamespace(text=said, reasoning=reasoning, finish_reason=finish, usage={"completion_tokens": 9})

    result = asyncio.run(rollout(doc, teacher, on_done=lambda tokens, started: None))
    assert result["question"] == "Why is the sea salty?"  # its reasoning about the question is not the question
    assert asked[0]["max_tokens"] == 64 + 500  # room to think within the budget, then to write the question

    async def thinks_forever(payload):
        return SimpleNamespace(text="", reasoning="Let me think about the sea", finish_reason="length", usage={})

    never = asyncio.run(rollout(doc, thinks_forever, on_done=lambda tokens, started: None))
    assert never["answers"] == [] and never["empty_reason"] == "question_reasoning_unclosed"
