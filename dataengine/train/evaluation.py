"""Held-out metrics of one student: how close its token distribution is to the teacher's, and what
its own answers are worth (code that passes its tests in the sandbox, answers in the language asked)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from dataengine.checks.code_answer import parse_code_answer
from dataengine.checks.language import detect_language
from dataengine.checks.math_answer import check_solutions
from dataengine.checks.sandbox import SandboxLimits, run_python
from dataengine.rows import (
    Reasoning,
    ReasoningFormat,
    conversation_ids,
    primary_language,
    split_reasoning,
    with_reasoning,
)
from dataengine.train import intervals
from dataengine.train.offline_topk import topk_kl


@torch.no_grad()
def answer_fit(model, tokenizer, rows: list[dict], form: ReasoningFormat = "think_tags") -> dict:
    """On the teacher's answers (with their reasoning, in `form`, as the student learned them): mean per-token
    KL(teacher || student) over the teacher's top-k plus a tail bucket (when the rows were scored) and the
    student's perplexity, each with its bootstrap interval."""
    model.eval()
    kl, kl_tokens = 0.0, 0
    nll_rows, kl_rows = [], []  # [sum, tokens] per row, for the intervals
    for row in rows:
        ids, start, mask = answer_tokens(tokenizer, row, form)
        input_ids = torch.tensor([ids])
        logits = model(input_ids=input_ids).logits[0].float()
        learned = torch.tensor(mask if mask is not None else [1] * (len(ids) - start), dtype=torch.bool)
        predicted = logits[start - 1 : -1]  # the logits at p - 1 predict token p
        targets = input_ids[0, start:]
        nll = F.cross_entropy(predicted[learned], targets[learned], reduction="sum").item()
        nll_rows.append([nll, int(learned.sum())])
        if row.get("teacher_topk_ids") is not None:
            n = len(row["teacher_topk_ids"])
            kl_sum, count = topk_kl(
                predicted[:n],
                torch.tensor(row["teacher_topk_ids"]),
                torch.tensor(row["teacher_topk_logprobs"]),
                learned[:n],
            )
            kl += kl_sum.item()
            kl_tokens += int(count)
            kl_rows.append([kl_sum.item(), int(count)])
    fit = perplexity_fit(nll_rows)
    return {
        "kl_teacher_student": kl / kl_tokens if kl_tokens else None,
        **fit,
        "intervals": {
            "kl_teacher_student": intervals.bootstrap(np.array(kl_rows), intervals.ratio) if kl_rows else None,
            **fit["intervals"],
        },
    }


def answer_tokens(tokenizer, row: dict, form: ReasoningFormat) -> tuple[list[int], int, list[int] | None]:
    """A held-out row's token ids, where its answer starts and the mask of its assistant turns from there: as
    scoring gave them where the row was scored, else rendered here the same way (`rows.conversation_ids`)."""
    if row.get("token_ids") is not None:
        return list(row["token_ids"]), row["completion_start"], row.get("completion_mask")
    return conversation_ids(tokenizer, with_reasoning(row["messages"], row.get("reasoning"), form))


def perplexity_fit(nll_rows: list[list[float]]) -> dict:
    """Perplexity over answers from each one's [summed negative log-likelihood, tokens], with its interval."""
    nll, tokens = sum(r[0] for r in nll_rows), int(sum(r[1] for r in nll_rows))
    return {
        "perplexity": math.exp(nll / tokens) if tokens else None,
        "answer_tokens": tokens,
        "intervals": {
            "perplexity": intervals.bootstrap(np.array(nll_rows), intervals.perplexity) if nll_rows else None
        },
    }


# the length of a student's answer kept in samples.jsonl (and judged for the win rate)
SAMPLE_CHARS = 2000


# held-out prompts answered at once: a batch keeps the CPU's cores busy where one prompt at a time leaves a small
# student's matmuls too thin to use them (bench/BENCHMARKS.md, "Evaluation")
ANSWER_BATCH = 16


@torch.no_grad()
def generate_answers(
    model,
    tokenizer,
    prompts: list[tuple[list[dict], str]],
    max_new_tokens: int,
    advance: Callable[[int], None] = lambda n: None,
    batch_size: int = ANSWER_BATCH,
) -> list[str]:
    """Greedy answers to each (prompt turns, prefix); `prefix` starts the answer as it started the teacher's.
    Prompts of like length go in a batch together, left-padded here: with the eos token where the tokenizer has
    no pad token (many have none, and the tokenizer's own padding refuses to run without one)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = [
        tokenizer(
            tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) + prefix,
            add_special_tokens=False,
        )["input_ids"]
        for messages, prefix in prompts
    ]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    # an MoE student trained with its router loss keeps `output_router_logits` on; transformers' Mixtral then
    # computes that loss at every decoding step against the whole attention mask, which fails once a batch is
    # padded. Answers need no router loss
    router = {"output_router_logits": False} if getattr(model.config, "output_router_logits", False) else {}
    answers: list[str] = [""] * len(ids)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        width = max(len(ids[i]) for i in batch)
        input_ids = torch.tensor([[pad] * (width - len(ids[i])) + ids[i] for i in batch])
        mask = torch.tensor([[0] * (width - len(ids[i])) + [1] * len(ids[i]) for i in batch])
        out = model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            **router,
        )
        for row, i in enumerate(batch):
            answers[i] = prompts[i][1] + tokenizer.decode(out[row, width:], skip_special_tokens=True)
        advance(len(batch))
    return answers


def answer_quality(
    model,
    tokenizer,
    rows: list[dict],
    code_prefix: str,
    max_new_tokens: int,
    limits: SandboxLimits,
    advance: Callable[[int], None] = lambda n: None,
) -> dict:
    """The student answers the held-out prompts itself: code answers must parse and pass their own tests in
    the sandbox (the rule curation applied to the teacher); math answers must reach the problem's answer (as
    math-verify reads them; the teacher's verified answer where the problem's own could not be read); chat
    answers must be in the language asked. Where the
    teacher reasoned, the student's reasoning is read apart: its length and whether it closed are measured, and
    the checks read the answer after it."""
    model.eval()
    passed = code = in_language = chat = solved = problems = 0
    samples = []
    prompts = [(row["messages"][:-1], code_prefix if row["kind"] == "code" else "") for row in rows]
    said_all = generate_answers(model, tokenizer, prompts, max_new_tokens, advance)
    for row, said in zip(rows, said_all, strict=True):
        is_code = row["kind"] == "code"
        thought = split_reasoning(said, None, None) if row.get("reasoning") is not None else None
        answer = thought.answer if thought else said
        if is_code:
            code += 1
            parsed = parse_code_answer(answer)
            ok = parsed.ok and run_python(f"{parsed.solution}\n\n\n{parsed.tests}\n", limits).passed
            passed += ok
        elif row["kind"] == "math":
            problems += 1
            reference = row.get("reference_answer") or row.get("final_answer")
            (checked,) = check_solutions(reference, [answer], row["language"])
            ok = checked.verified
            solved += ok
        else:
            chat += 1
            detected, _ = detect_language(answer)
            ok = detected == primary_language(row["language"])
            in_language += ok
        samples.append(
            {
                "id": row["id"],
                "kind": row["kind"],
                "language": row["language"],
                "ok": bool(ok),
                "answer": answer[:SAMPLE_CHARS],
                **(_reasoning_sample(tokenizer, thought) if thought else {}),
            }
        )
    reasoned = [s for s in samples if "reasoning_closed" in s]
    return {
        **_reasoning_figures([s["reasoning_tokens"] for s in reasoned], [s["reasoning_closed"] for s in reasoned]),
        "code_pass_rate": passed / code if code else None,
        "code_rows": code,
        "language_fidelity": in_language / chat if chat else None,
        "chat_rows": chat,
        **({"math_accuracy": solved / problems, "math_rows": problems} if problems else {}),
        "intervals": {
            "code_pass_rate": _share_interval([s["ok"] for s in samples if s["kind"] == "code"]),
            "language_fidelity": _share_interval([s["ok"] for s in samples if s["kind"] == "chat"]),
            "math_accuracy": _share_interval([s["ok"] for s in samples if s["kind"] == "math"]),
        },
        "samples": samples,
    }


def _reasoning_sample(tokenizer, thought: Reasoning) -> dict:
    """A student's reasoning, as its sample records it: its tokens, whether it closed, and its start."""
    reasoning = thought.reasoning or ""
    return {
        "reasoning_tokens": len(tokenizer(reasoning, add_special_tokens=False)["input_ids"]),
        "reasoning_closed": bool(thought.closed),
        "reasoning": reasoning[:SAMPLE_CHARS],
    }


def _reasoning_figures(tokens: list[int], closed: list[bool]) -> dict:
    """Mean reasoning tokens and the share closed, over the held-out rows the teacher reasoned on (none: {})."""
    if not tokens:
        return {}
    return {
        "reasoning_rows": len(tokens),
        "reasoning_tokens": sum(tokens) / len(tokens),
        "reasoning_closed_rate": sum(closed) / len(closed),
    }


def _share_interval(oks: list[bool]) -> list[float] | None:
    return intervals.bootstrap(np.array(oks, dtype=np.float64), intervals.share) if oks else None


def teacher_row(rows: list[dict], fit: dict) -> dict:
    """The teacher beside the students: its perplexity on its own held-out answers (`fit`, from `answer_fit` on
    the teacher loaded here or `perplexity_fit` on its served logprobs), and the share of those answers that
    passed the checks curation applied (code tests, language): the figures a student is measured against."""
    code = [bool(r.get("tests_passed")) for r in rows if r["kind"] == "code"]
    chat = [r.get("language_detected") == primary_language(r["language"]) for r in rows if r["kind"] == "chat"]
    verified = [bool(r.get("answer_verified")) for r in rows if r["kind"] == "math"]
    reasoned = [r for r in rows if r.get("reasoning") is not None]
    return {
        **_reasoning_figures(
            [r["reasoning_tokens"] or 0 for r in reasoned], [bool(r["reasoning_closed"]) for r in reasoned]
        ),
        "perplexity": fit["perplexity"],
        "answer_tokens": fit["answer_tokens"],
        # held-out rows the served teacher's context could not take, left out of its perplexity
        "too_long": fit.get("too_long", 0),
        "code_pass_rate": sum(code) / len(code) if code else None,
        "language_fidelity": sum(chat) / len(chat) if chat else None,
        **({"math_accuracy": sum(verified) / len(verified)} if verified else {}),
        "intervals": {
            "math_accuracy": _share_interval(verified),
            "perplexity": fit["intervals"]["perplexity"],
            "code_pass_rate": _share_interval(code),
            "language_fidelity": _share_interval(chat),
        },
    }
