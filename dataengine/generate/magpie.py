"""Prompts without seeds (Magpie, Xu et al. 2024): the teacher writes the user's turn itself.

Its chat template, rendered with a system turn and a user's message, puts some text before that message (the
pre-query text: for ChatML, `<|im_start|>system\\n…<|im_end|>\\n<|im_start|>user\\n`). Sent as a plain completion
prompt (vLLM's completions endpoint), the teacher continues it with a message a user might write, and stops at
the template's end of a user's turn. The system turn, written in each language, sets the language. The messages
then pass the question checks (checks/questions.py), a language check and an exact dedup before they are asked
as prompts, so the teacher never answers an empty, cut-off, foreign or repeated one.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from datatrove.data import Document
from datatrove.pipeline.inference.types import GenerateFunction

from dataengine.checks.language import detect_language
from dataengine.checks.questions import question_problem
from dataengine.generate.rollout import request_seed
from dataengine.generate.seeds import PromptSeed, load_languages
from dataengine.recipe import GenerateConfig, MagpieConfig
from dataengine.rows import primary_language

_MARK = "\x00magpie-user-turn\x00"


def pre_query(tokenizer, system: str) -> tuple[str, str | None]:
    """The text the tokenizer's chat template writes before a user's message that follows `system`, and the text
    that ends a user's turn (the completion's stop), both read off the template itself."""
    turns = [{"role": "system", "content": system}, {"role": "user", "content": _MARK}]
    before, _, after = tokenizer.apply_chat_template(turns, tokenize=False).partition(_MARK)
    adds_bos = tokenizer.bos_token_id is not None and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]
    if adds_bos and before.startswith(tokenizer.bos_token):
        before = before[len(tokenizer.bos_token) :]  # the completions endpoint adds it again when it tokenizes
    end = after.strip().split("\n", 1)[0]
    return before, end or None


def system_turn(magpie: MagpieConfig, language: str) -> str:
    """The system turn that sets a language: the recipe's, else the shipped one (validated to exist)."""
    lang = next(lang for lang in magpie.languages if lang.code == language)
    return lang.system_prompt or load_languages()[language]["magpie_system"]


def magpie_documents(gen: GenerateConfig, tokenizer) -> list[Document]:
    """One document per user turn to write, quota x oversample per language, in id order (the order an inference
    pass deals them in)."""
    magpie = gen.magpie
    docs = []
    for lang in magpie.languages:
        system = system_turn(magpie, lang.code)
        prompt, stop = pre_query(tokenizer, system)
        for n in range(math.ceil(lang.quota * magpie.oversample)):
            key = hashlib.sha256(f"magpie\x1f{lang.code}\x1f{system}\x1f{n}".encode()).hexdigest()[:16]
            seed = request_seed(gen.seed, key, "magpie") if gen.sampling.seed_requests else None
            meta = {"language": lang.code, "stop": stop, "max_tokens": magpie.max_tokens, "seed": seed}
            docs.append(Document(text=prompt, id=key, metadata=meta))
    return sorted(docs, key=lambda doc: doc.id)


async def magpie_rollout(
    document: Document, generate: GenerateFunction, *, on_done: Callable[[int, float], None]
) -> dict[str, Any]:
    """The user turn the teacher writes after the pre-query text (a completion request, not a chat one)."""
    started = time.time()
    meta = document.metadata
    payload: dict[str, Any] = {"prompt": document.text, "max_tokens": meta["max_tokens"], "user": document.id}
    if meta["stop"]:
        payload["stop"] = [meta["stop"]]
    if meta["seed"] is not None:
        payload["seed"] = meta["seed"]
    written = await generate(payload)
    tokens = written.usage.get("completion_tokens", 0)
    on_done(tokens, started)
    return {"text": written.text, "finish_reason": written.finish_reason, "tokens": tokens}


@dataclass
class Written:
    """What the Magpie pass gave: the prompts to answer, and what was counted on the way."""

    seeds: list[PromptSeed] = field(default_factory=list)
    asked: int = 0
    tokens: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> user turns not asked
    surplus: int = 0  # user turns that passed past their language's quota

    def stats(self) -> dict[str, Any]:
        return {
            "asked": self.asked,
            "kept": len(self.seeds),
            "dropped": dict(self.dropped),
            "surplus": self.surplus,
            "tokens": self.tokens,
        }


def select(magpie: MagpieConfig, docs: Iterable[Document]) -> Written:
    """The user turns the teacher wrote (datatrove's documents of the pass, any order; a chunk a resumed pass
    replayed comes twice and counts once) as prompts: in id order, those that pass the question checks, are in
    their language and are not a repeat (case and spacing aside) of an earlier one in it, the first `quota` of
    each language."""
    written = Written()
    kept: dict[str, list[str]] = defaultdict(list)
    seen: set[tuple[str, str]] = set()
    last = None
    for doc in sorted(docs, key=lambda d: d.id):
        if doc.id == last:
            continue
        last = doc.id
        language = doc.metadata["language"]
        result = doc.metadata["rollout_results"][0]
        written.asked += 1
        written.tokens += result["tokens"]
        turn = result["text"].strip()
        if problem := question_problem(turn, result["finish_reason"], primary_language(language)):
            written.dropped[problem] += 1
            continue
        if detect_language(turn)[0] != primary_language(language):  # the system turn asked for it, not always heard
            written.dropped["prompt_wrong_language"] += 1
            continue
        normal = (language, " ".join(turn.casefold().split()))
        if normal in seen:
            written.dropped["duplicate"] += 1
            continue
        seen.add(normal)
        kept[language].append(turn)
    for lang in magpie.languages:
        turns = kept[lang.code]
        written.surplus += max(0, len(turns) - lang.quota)
        written.seeds += [
            PromptSeed("chat", "magpie", lang.code, None, t, magpie.rollouts) for t in turns[: lang.quota]
        ]
    return written


def magpie_problems(magpie: MagpieConfig) -> Iterator[str]:
    """Languages without a shipped system turn must bring their own."""
    shipped = load_languages()
    for i, lang in enumerate(magpie.languages):
        if lang.system_prompt is None and "magpie_system" not in shipped.get(lang.code, {}):
            yield (
                f"generate.magpie.languages[{i}]: language {lang.code!r} has no shipped system turn (shipped: "
                f"{', '.join(sorted(shipped))}); give `system_prompt:` written in that language"
            )
