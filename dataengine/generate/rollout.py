"""What one prompt asks of the teacher, as a datatrove rollout function.

One datatrove document is one distinct prompt. For an `instruct_answer` prompt the teacher first
writes the question (once, shared by every rollout), then answers it `rollouts` times; for a `math_problem`
prompt it writes a word problem and its answer line, kept apart, then solves the problem `rollouts` times;
other tasks answer the prompt directly. Every request carries a seed derived from the prompt, so a resumed run
sends byte-identical requests and datatrove's request cache answers the finished ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Callable
from typing import Any

from datatrove.data import Document
from datatrove.pipeline.inference.types import GenerateFunction

from dataengine.checks.math_answer import split_problem
from dataengine.rows import split_reasoning
from dataengine.teacher.inference import ROUTED_EXPERTS

_LABEL = re.compile(
    r"^\s*(?:\*\*)?(?:question|frage|pregunta|domanda|pergunta|вопрос|问题)\s*[:：]\s*(?:\*\*)?\s*", re.I
)


# A short frame ending in a colon or comma ("A curious student might ask:", "Un étudiant pourrait demander :"),
# then the question in quotes (small teachers often leave the closing quote out). The frame names the asking;
# a lead-in that is itself a question ('What does Hamlet mean when he asks, "To be or not to be?"') is kept.
_LEAD_IN = re.compile(
    r"^(?P<frame>[^\"“„«「\n?？]{0,80})[:,：，]\s*[\"“„«「](?P<question>[^\"”“»」\n]+?[?？])\s*[\"”“»」]?$"
)
_FRAME = re.compile(
    r"\b(ask|asks|asked|question|student|demander|demande|preguntar|pregunta|fragen|frage|chiedere|"
    r"domanda|perguntar|pergunta|спросить|спросит|вопрос)\b|问|提问|学生",
    re.I,
)
_INTERROGATIVE = re.compile(
    r"^(what|why|how|when|where|who|which|does|do|is|are|can|could|would|pourquoi|comment|quel|quelle|qu|"
    r"por qué|cómo|qué|cuál|warum|wie|was|wer|welche|perché|come|che|почему|как|что)\b",
    re.I,
)


def request_seed(*parts: object) -> int:
    """A stable 31-bit sampling seed from the run seed, the prompt and the request's role."""
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:4], "big") >> 1


def clean_question(text: str) -> str:
    """The question a teacher wrote, without a leading label, a lead-in ('A curious student might ask, "...'),
    quotes, or rambling after a blank line."""
    text = text.strip()
    text = re.split(r"\n\s*\n", text, maxsplit=1)[0]
    text = _LABEL.sub("", text).strip()
    quoted = _LEAD_IN.match(text)
    if quoted and _FRAME.search(quoted["frame"]) and not _INTERROGATIVE.match(quoted["frame"].strip()):
        text = quoted.group("question")
    return text.strip("\"'“”«»「」 \n")


def _payload(
    messages: list[dict],
    max_tokens: int,
    tag: str,
    seed: int | None,
    prefix: str | None = None,
    regex: str | None = None,
) -> dict[str, Any]:
    payload: dict[str, Any] = {"messages": messages, "max_tokens": max_tokens, "user": tag}
    if seed is not None:
        payload["seed"] = seed
    if regex:
        payload["structured_outputs"] = {"regex": regex}  # vLLM's structured outputs: the answer matches it
    if prefix:
        # vLLM continues a partial assistant turn: the answer starts in the format we parse
        payload.update(
            messages=messages + [{"role": "assistant", "content": prefix}],
            continue_final_message=True,
            add_generation_prompt=False,
        )
    return payload


async def rollout(
    document: Document, generate: GenerateFunction, *, on_done: Callable[[int, float], None]
) -> dict[str, Any]:
    """The question (for instruct tasks) then the answers of one prompt; `on_done(tokens, started)` reports
    the tokens the teacher wrote and when the rollout began, for the progress bar and the throughput log."""
    started = time.time()
    meta = document.metadata
    result: dict[str, Any] = {"question": None, "question_finish_reason": None, "question_tokens": 0, "answers": []}
    user = document.text
    if meta["task"] in ("instruct_answer", "math_problem"):
        question_request = [{"role": "user", "content": document.text}]
        asked = await generate(
            _payload(
                question_request,
                meta["question_max_tokens"],
                f"{document.id}/q",
                meta["question_seed"],
                regex=meta.get("question_regex"),
            )
        )
        # a thinking teacher's reasoning about the question is not the question
        written = split_reasoning(asked.text, asked.reasoning, asked.finish_reason)
        user = written.answer
        if meta["task"] == "math_problem":  # the problem's own answer line is kept apart, to check solutions by
            user, result["reference_answer"] = split_problem(user)
            user = f"{user}\n\n{meta['solve_instruction']}" if user else ""
        else:
            user = clean_question(user)
        result.update(
            question=user,
            question_finish_reason=asked.finish_reason,
            question_tokens=asked.usage.get("completion_tokens", 0),
        )
        if not user:
            if written.reasoning is not None:  # it thought until its cap and never wrote the question
                result["empty_reason"] = "question_reasoning_unclosed"
            on_done(result["question_tokens"], started)
            return result  # no question, no answers: counted as a drop by the stage
    messages = ([{"role": "system", "content": meta["system_prompt"]}] if meta.get("system_prompt") else []) + [
        {"role": "user", "content": user}
    ]
    # every answer's outcome is collected before one failure is raised, so no sibling request outlives its
    # document (gather retrieves a late sibling's exception either way; the document tasks' own exceptions,
    # which datatrove's runner can leave unretrieved, are retrieved in teacher/inference.py)
    outcomes = await asyncio.gather(
        *(
            generate(
                _payload(
                    messages,
                    meta["max_tokens"],
                    f"{document.id}/a{r}",
                    seed,
                    meta.get("answer_prefix"),
                    meta.get("answer_regex"),
                )
            )
            for r, seed in enumerate(meta["answer_seeds"])
        ),
        return_exceptions=True,
    )
    if failed := next((o for o in outcomes if isinstance(o, BaseException)), None):
        raise failed
    result["messages"] = messages
    result["answers"] = [
        _answer(a, s, meta.get("answer_prefix")) for a, s in zip(outcomes, meta["answer_seeds"], strict=True)
    ]
    if meta.get("turns", 1) > 1 and meta["task"] == "instruct_answer":
        # each rollout's conversation goes on on its own; their outcomes are collected as the answers' were
        conversations = await asyncio.gather(
            *(_follow_ups(document, generate, meta, r, messages, a) for r, a in enumerate(result["answers"])),
            return_exceptions=True,
        )
        if failed := next((c for c in conversations if isinstance(c, BaseException)), None):
            raise failed
        for answer, follow_ups in zip(result["answers"], conversations, strict=True):
            answer["follow_ups"] = follow_ups
    turns = [t for a in result["answers"] for t in [a, *a.get("follow_ups", [])]]
    tokens = sum(t["completion_tokens"] + t.get("question_tokens", 0) for t in turns)
    on_done(result["question_tokens"] + tokens, started)
    return result


def _answer(said: Any, seed: int | None, prefix: str | None = None) -> dict[str, Any]:
    """One answer as the rollout's result keeps it."""
    return {
        "text": (prefix or "") + said.text,
        "finish_reason": said.finish_reason,
        "prompt_tokens": said.usage.get("prompt_tokens", 0),
        "completion_tokens": said.usage.get("completion_tokens", 0),
        "routed_experts": said.usage.get(ROUTED_EXPERTS),
        # a reasoning parser's output, apart from the text, and its token count (vLLM's usage)
        "reasoning": said.reasoning or None,
        "reasoning_tokens": (said.usage.get("completion_tokens_details") or {}).get("reasoning_tokens"),
        "seed": seed,
    }


def answer_text(answer: dict) -> str:
    """What an assistant turn says, its reasoning left out (a conversation goes on without it)."""
    return split_reasoning(answer["text"], answer.get("reasoning"), answer["finish_reason"]).answer


def transcript(conversation: list[dict]) -> str:
    """The conversation as the teacher reads it when it plays the user (the system turn left out)."""
    label = {"user": "User", "assistant": "Assistant"}
    return "\n\n".join(f"{label[m['role']]}: {m['content']}" for m in conversation if m["role"] in label)


async def _follow_ups(
    document: Document, generate: GenerateFunction, meta: dict, r: int, messages: list[dict], first: dict
) -> list[dict]:
    """Turns 2 to `turns` of rollout `r`'s conversation: the teacher plays the user (its persona, in its language)
    and writes a follow-up question, then answers it after the whole conversation. A follow-up that comes out
    empty ends the conversation there."""
    conversation = [*messages, {"role": "assistant", "content": answer_text(first)}]
    follow_ups: list[dict] = []
    for t in range(2, meta["turns"] + 1):
        seed = None if first["seed"] is None else request_seed(first["seed"], t)
        ask = meta["follow_up"].format(transcript=transcript(conversation), user=meta["user"])
        tag = f"{document.id}/a{r}/t{t}"
        asked = await generate(
            _payload([{"role": "user", "content": ask}], meta["question_max_tokens"], f"{tag}/q", seed)
        )
        question = clean_question(split_reasoning(asked.text, asked.reasoning, asked.finish_reason).answer)
        if not question:
            break
        conversation.append({"role": "user", "content": question})
        # a copy: the conversation goes on after the request, which must stay what was sent
        said = _answer(await generate(_payload(list(conversation), meta["max_tokens"], tag, seed)), seed)
        said |= {
            "question": question,
            "question_finish_reason": asked.finish_reason,
            "question_tokens": asked.usage.get("completion_tokens", 0),
        }
        follow_ups.append(said)
        conversation.append({"role": "assistant", "content": answer_text(said)})
    return follow_ups
