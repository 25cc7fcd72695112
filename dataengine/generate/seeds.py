"""Seeds that ship with the package, and their expansion into prompts with quotas.

Expansion is deterministic in `generate.seed`: the same recipe asks the same questions, and a
scheduled run that changes the seed draws different topics.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

from datasets import Features, Value

from dataengine import data as shipped
from dataengine.recipe import GenerateConfig, PromptSource, resolve_path
from dataengine.rows import Group, sorted_rows

CODE_LANGUAGE = "python"


@cache
def _data(name: str) -> dict[str, Any]:
    return shipped.load(name)


def load_languages() -> dict[str, dict[str, str]]:
    return _data("languages.yaml")


def load_topics() -> dict[str, list[str]]:
    return _data("topics.yaml")


def load_personas() -> dict[str, list[str]]:
    return _data("personas.yaml")


def load_math_topics() -> list[str]:
    return _data("math_topics.yaml")


def load_code_archetypes() -> dict[str, str]:
    return _data("code_archetypes.yaml")


@dataclass(frozen=True)
class PromptSeed:
    """One distinct prompt; it is sampled `rollouts` times.

    task: `instruct_answer` (teacher writes a question from `prompt`, then answers it),
    `code_task` (one structured code answer), `math_problem` (teacher writes a word problem with its answer
    from `prompt`, then solves it), `answer` (`prompt` is the user turn itself) or `magpie` (`prompt`
    is a user turn the teacher wrote itself, generate/magpie.py).
    """

    kind: Literal["chat", "code", "math"]
    task: Literal["instruct_answer", "code_task", "answer", "magpie", "math_problem"]
    language: str
    topic: str | None
    prompt: str
    rollouts: int
    round: int = 0  # 0: the recipe's prompts (its quotas, or `prompts` where set); 1..: top-up rounds
    persona: str | None = None  # who asks (generate.chat.personas)

    @property
    def key(self) -> str:
        """Content hash of the prompt (and top-up round: a round may draw a topic again, as a new sample);
        with the rollout index and generation config it makes the row id."""
        parts = [self.kind, self.task, self.language, self.topic or "", self.prompt]
        parts += [f"round {self.round}"] if self.round else []
        raw = "\x1f".join(parts + ([f"persona {self.persona}"] if self.persona else []))
        return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _draw(pool: list[str], count: int, rng: random.Random) -> Iterator[str]:
    """`count` items, all distinct while the pool lasts, then cycling through fresh shuffles."""
    while count > 0:
        order = pool[:]
        rng.shuffle(order)
        yield from order[:count]
        count -= len(order)


def _rng(gen: GenerateConfig, what: str, round: int) -> random.Random:
    return random.Random(f"{gen.seed}:{what}" + (f":top-up {round}" if round else ""))


def chat_seeds(gen: GenerateConfig, round: int = 0) -> Iterator[PromptSeed]:
    chat = gen.chat
    if chat is None:
        return
    if chat.topics:
        pool = list(chat.topics)
    else:
        topics = load_topics()
        pool = [t for d in (chat.domains or sorted(topics)) for t in topics[d]]
    shipped = load_languages()
    for lang in chat.languages:
        template = lang.instruction or shipped[lang.code]["persona_instruction" if chat.personas else "instruction"]
        rng = _rng(gen, f"chat:{lang.code}", round)
        topics = _draw(pool, lang.asked, rng)
        # drawn from their own generator: turning personas on leaves the topics as they were
        personas = (
            _draw(load_personas()[lang.code], lang.asked, _rng(gen, f"persona:{lang.code}", round))
            if chat.personas
            else itertools.repeat(None, lang.asked)
        )
        for n, (topic, persona) in enumerate(zip(topics, personas, strict=True)):
            # More prompts than the topic pool repeats topics; the repeat number keeps prompts distinct.
            suffix = "" if n < len(pool) else f" ({n // len(pool) + 1})"
            prompt = template.format(topic=topic, persona=persona) + suffix
            yield PromptSeed("chat", "instruct_answer", lang.code, topic, prompt, chat.rollouts, round, persona)


def math_seeds(gen: GenerateConfig, round: int = 0) -> Iterator[PromptSeed]:
    math = gen.math
    if math is None:
        return
    pool = list(math.topics or load_math_topics())
    shipped = load_languages()
    for lang in math.languages:
        template = lang.instruction or shipped[lang.code]["math_instruction"]
        for n, topic in enumerate(_draw(pool, lang.asked, _rng(gen, f"math:{lang.code}", round))):
            suffix = "" if n < len(pool) else f" ({n // len(pool) + 1})"
            yield PromptSeed(
                "math", "math_problem", lang.code, topic, template.format(topic=topic) + suffix, math.rollouts, round
            )


CODE_REQUEST = """Write a small Python programming exercise: {archetype}.
Use exactly this format, with these three headings and nothing else:

### Problem
<the task in two or three sentences, naming the function to write>

### Solution
```python
<the reference solution: one function, standard library only>
```

### Tests
```python
<three to five assert statements that call the function>
```"""


def code_seeds(gen: GenerateConfig, round: int = 0) -> Iterator[PromptSeed]:
    code = gen.code
    if code is None:
        return
    archetypes = load_code_archetypes()
    names = code.archetypes or sorted(archetypes)
    rng = _rng(gen, "code", round)
    for n, name in enumerate(_draw(names, code.count, rng)):
        suffix = "" if n < len(names) else f"\n(Variant {n // len(names) + 1}: pick a different function than usual.)"
        prompt = CODE_REQUEST.format(archetype=archetypes[name]) + suffix
        yield PromptSeed("code", "code_task", code.language, name, prompt, code.rollouts, round)


def source_seeds(source: PromptSource, base_dir: Path) -> Iterator[PromptSeed]:
    """Prompts from a local file or a Hub dataset, read with `datasets` (which also streams the Hub): its arrow
    cache is memory-mapped, and read here a batch at a time."""
    from datasets import load_dataset

    from dataengine.errors import UserError

    if source.path is not None:
        path = resolve_path(source.path, base_dir)
        builder = "parquet" if path.suffix == ".parquet" else "json"
        ds = load_dataset(builder, data_files=str(path), split="train")
    else:
        ds = load_dataset(source.dataset, split=source.split)
    origin = source.path or source.dataset
    for column in filter(None, [source.field, source.language_field]):
        if column not in ds.column_names:
            raise UserError(f"prompt source {origin}: no column {column!r} (columns: {', '.join(ds.column_names)})")
    if source.limit is not None:
        ds = ds.select(range(min(source.limit, len(ds))))
    for batch in ds.iter(batch_size=1024):
        texts = batch[source.field]
        languages = batch[source.language_field] if source.language_field else [source.language] * len(texts)
        for text, language in zip(texts, languages, strict=True):
            if isinstance(text, str) and text.strip():
                yield PromptSeed("chat", "answer", str(language), None, text.strip(), source.rollouts)


def expand_seeds(gen: GenerateConfig, base_dir: Path) -> Iterator[PromptSeed]:
    """Every prompt of the recipe, in a stable order, made as they are asked for (a prompt file may repeat one:
    `distinct` asks it once)."""
    yield from chat_seeds(gen)
    yield from code_seeds(gen)
    yield from math_seeds(gen)
    for source in gen.sources:
        yield from source_seeds(source, base_dir)


def top_up_seeds(gen: GenerateConfig, extra: dict[str, int], round: int) -> Iterator[PromptSeed]:
    """Prompts of one top-up round: `extra` maps groups ("chat/<language>", "code/<language>", "math/<language>")
    to how many more distinct prompts to ask, drawn with a round-specific seed so that they differ from earlier
    ones."""
    wanted = {Group.parse(key): n for key, n in extra.items()}
    update: dict = {"sources": []}
    if gen.chat is not None:
        languages = [
            lang.model_copy(update={"quota": wanted.get(Group("chat", lang.code), 0), "prompts": None})
            for lang in gen.chat.languages
        ]
        update["chat"] = gen.chat.model_copy(update={"languages": languages})
    if gen.code is not None:
        update["code"] = gen.code.model_copy(update={"count": wanted.get(Group("code", gen.code.language), 0)})
    if gen.math is not None:
        problems = [
            lang.model_copy(update={"quota": wanted.get(Group("math", lang.code), 0), "prompts": None})
            for lang in gen.math.languages
        ]
        update["math"] = gen.math.model_copy(update={"languages": problems})
    again = gen.model_copy(update=update)
    yield from chat_seeds(again, round)
    yield from code_seeds(again, round)
    yield from math_seeds(again, round)


_SEED_FEATURES = Features(
    {
        "key": Value("string"),
        **{name: Value("string") for name in ("kind", "task", "language", "topic", "prompt", "persona")},
        "rollouts": Value("int32"),
        "round": Value("int32"),
    }
)


def distinct(seeds: Iterable[PromptSeed], spill: Path) -> Iterator[PromptSeed]:
    """`seeds` once each, in key order (a document's id is its key, and an inference pass takes its documents
    in id order), sorted through files under `spill` so that a million-line prompt file is never held."""
    last = None
    for row in sorted_rows(({"key": s.key, **dataclasses.asdict(s)} for s in seeds), ["key"], _SEED_FEATURES, spill):
        if (key := row.pop("key")) != last:
            last = key
            yield PromptSeed(**row)
