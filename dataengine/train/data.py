"""Rows for training and evaluation: the held-out split and the prompt/answer token layout.

Scoring, offline distillation and evaluation must agree on which tokens are the answer, so the
layout is computed once here, with the chat template of the shared tokenizer.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pyarrow.parquet as pq


def read_rows(folder: Path, columns: list[str] | None = None) -> list[dict]:
    """Every row of a stage's parquet shards (`<folder>/data/*.parquet`), all columns or only `columns`."""
    # pyarrow rather than Dataset.from_parquet, which refuses a shard with no rows ("corresponds to no
    # data"): a stage that kept nothing must read as no rows, so the next stage can say so
    return [row for path in sorted((folder / "data").glob("*.parquet"))
            for row in pq.read_table(path, columns=columns).to_pylist()]  # fmt: skip


def split_rows(rows: list[dict], eval_fraction: float) -> tuple[list[dict], list[dict]]:
    """(train, held-out): the held-out rows are those whose id hashes lowest, at least one of each when there
    are two rows or more. It depends only on the row ids, so every stage draws the same split."""
    ranked = sorted(rows, key=lambda r: hashlib.sha256(r["id"].encode()).hexdigest())
    n_eval = min(max(1, math.ceil(len(rows) * eval_fraction)), len(rows) - 1) if len(rows) > 1 else 0
    held = {r["id"] for r in ranked[:n_eval]}
    return [r for r in rows if r["id"] not in held], [r for r in rows if r["id"] in held]


def _ids(encoded) -> list[int]:
    # transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True)
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def prompt_and_full_ids(tokenizer, messages: list[dict]) -> tuple[list[int], int]:
    """Token ids of the whole conversation and where the final (assistant) answer starts."""
    prompt = _ids(tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True))
    full = _ids(tokenizer.apply_chat_template(messages, tokenize=True))
    if full[: len(prompt)] != prompt:
        raise ValueError("the chat template renders the prompt differently once the answer is appended")
    return full, len(prompt)


def prompt_completion(messages: list[dict]) -> dict:
    """TRL's conversational prompt-completion form: its completion-only loss then covers the answer alone."""
    return {"prompt": messages[:-1], "completion": messages[-1:]}
