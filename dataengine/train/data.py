"""The train and evaluate stages' rows as `datasets` holds them, and in the forms TRL's trainers take.

A stage's shards are loaded once into arrow under the stage's work folder and memory-mapped from there
(`load_dataset("parquet", ...)`), the held-out split is a selection by an arrow mask of their ids, and each
phase's form is a `map` of that, a batch at a time. Only the held-out rows, which evaluation answers one by
one, become Python objects. Whatever reads a whole column of a selection does so a batch at a time
(`lowest_ids`): `datasets` gathers such a column one row at a time, an object each.
"""

from __future__ import annotations

import heapq
import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets import Dataset, Features, List, Value, load_dataset

from dataengine.rows import ReasoningFormat, held_out_ids, prompt_key, shard_files, with_reasoning


def load_rows(stage_folder: Path, cache_dir: Path) -> Dataset:
    """A stage's rows, memory-mapped: its shards are converted to arrow once, under `cache_dir`, and read
    from there by every phase (a rerun on the same shards reuses the conversion)."""
    # a shard with no rows (what a stage that kept nothing writes) is left out: `datasets` refuses a file that
    # "corresponds to no data"
    files = [str(path) for path in shard_files(stage_folder) if pq.ParquetFile(path).metadata.num_rows]
    if not files:
        return Dataset.from_list([])
    return load_dataset("parquet", data_files=files, split="train", cache_dir=str(cache_dir))


def split_rows(rows: Dataset, eval_fraction: float, min_rows: int = 1) -> tuple[Dataset, list[dict]]:
    """(the training rows, memory-mapped; the held-out rows, which evaluation answers one by one), by
    `rows.held_out_ids`: the same split every stage draws from the same ids."""
    if not len(rows):
        return rows, []
    # the id column in arrow, read from the memory map without a copy (rows as `load_rows` gives them: not a
    # selection yet, see `lowest_ids`); one mask in arrow draws both sides
    ids = rows.with_format("arrow")["id"]
    held = pc.is_in(ids, value_set=pa.array(sorted(held_out_ids(ids, eval_fraction, min_rows)), pa.string()))
    train = rows.select(np.flatnonzero(~held.to_numpy(zero_copy_only=False)))
    # the held-out rows batch by batch, not through `select(...).to_list()`, which gathers them one at a time:
    # 525 MB for the 50,000 of 1,000,000 rows (bench/BENCHMARKS.md, "Training's rows")
    batches = rows.with_format("arrow").iter(batch_size=1024)
    masks = (held.slice(start, 1024) for start in range(0, len(rows), 1024))
    held_out = [row for batch, mask in zip(batches, masks, strict=True) for row in batch.filter(mask).to_pylist()]
    return train, held_out


def lowest_ids(rows: Dataset, k: int) -> Dataset:
    """The `k` rows with the lowest ids, in id order, their ids read a batch at a time. Not `Dataset.sort`, nor
    the id column whole: on a selection of rows (the training split), `datasets` gathers either one row at a
    time, a Python object each (~500 MB at 1,000,000 rows; bench/BENCHMARKS.md, "Training's rows")."""
    batches = rows.select_columns(["id"]).with_format("arrow").iter(batch_size=10_000)
    ids = itertools.chain.from_iterable(batch["id"].to_pylist() for batch in batches)
    return rows.select([position for _, position in heapq.nsmallest(k, zip(ids, itertools.count()))])


def pairs_outside(pairs: Dataset, held_out: list[dict]) -> Dataset:
    """The preference pairs on prompts the evaluation does not ask: rollouts of one prompt fall on both sides of
    the held-out split (it hashes row ids), and a pair on an asked prompt would teach the student its answer."""
    asked = {prompt_key(row["messages"][:-1]) for row in held_out}
    if not len(pairs):
        return pairs
    return pairs.filter(
        lambda prompts: [prompt_key(p) not in asked for p in prompts], batched=True, input_columns="prompt"
    )


def phase_rows(phase: str, rows: Dataset, method: str | None = None, form: ReasoningFormat = "think_tags") -> Dataset:
    """`rows` (a stage's rows; preference pairs for "dpo") in the form the phase's TRL trainer takes, `method`
    naming the distillation method; a thinking teacher's reasoning joins the answer as `form` says."""
    if phase == "sft":
        return sft_rows(rows, form)
    if phase == "dpo":
        return rows.select_columns(["prompt", "chosen", "rejected"])
    if method == "offline_topk":
        return topk_rows(rows)
    if method == "gkd":
        return _conversations(
            rows, form, lambda conversations: {"messages": conversations}, "conversations", ["messages"]
        )
    return _form(rows, lambda messages: {"prompt": [m[:-1] for m in messages]}, ["messages"], "prompts")


def sft_rows(rows: Dataset, form: ReasoningFormat = "think_tags") -> Dataset:
    """TRL's conversational prompt-completion form: its completion-only loss then covers the answer alone, with
    the reasoning before it when the teacher thought. A conversation of several assistant turns gives one
    example per assistant turn (the conversation before it, then it), so the loss covers every one of them."""

    def build(conversations) -> dict:
        turns = [(c[:i], c[i : i + 1]) for c in conversations for i, m in enumerate(c) if m["role"] == "assistant"]
        return {"prompt": [p for p, _ in turns], "completion": [c for _, c in turns]}

    return _conversations(rows, form, build, "prompt-completion", ["prompt", "completion"])


def has_reasoning(rows: Dataset) -> bool:
    """Whether any row holds a thinking teacher's reasoning: its column read a batch at a time (`rows` may be a
    selection, see `lowest_ids`), stopping at the first batch that has some."""
    if "reasoning" not in rows.column_names:
        return False
    batches = rows.select_columns(["reasoning"]).with_format("arrow").iter(batch_size=10_000)
    return any(batch["reasoning"].null_count < len(batch) for batch in batches)


# a turn in the `template` form: its reasoning as the chat template reads it
_TEMPLATE_TURNS = List({"role": Value("string"), "content": Value("string"), "reasoning_content": Value("string")})


def _conversations(rows: Dataset, form: ReasoningFormat, build, what: str, outputs: list[str]) -> Dataset:
    """`build` over the rows' conversations as the student learns them (`rows.with_reasoning`), into the columns
    `outputs`. With the `template` form every turn has a `reasoning_content` (null but on the last turn of a row
    with reasoning), typed a string whatever the first batch holds: a batch of rows without reasoning and a later
    one with it must write one schema. Rows of earlier runs have no `reasoning` column."""
    if "reasoning" not in rows.column_names:
        return _form(rows, build, ["messages"], what)

    def learned(messages, reasonings) -> dict:
        conversations = [with_reasoning(m, r, form) for m, r in zip(messages, reasonings, strict=True)]
        if form == "template":
            conversations = [[{"reasoning_content": None, **m} for m in c] for c in conversations]
        return build(conversations)

    features = Features(dict.fromkeys(outputs, _TEMPLATE_TURNS)) if form == "template" else None
    return _form(rows, learned, ["messages", "reasoning"], what, features)


def topk_rows(rows: Dataset) -> Dataset:
    """Scored rows as the offline top-k trainer takes them: the conversation's token ids, a mask on the answer's,
    and the teacher's top-k per answer token."""

    def build(token_ids, starts, masks, topk_ids, topk_logprobs) -> dict:
        return {
            "input_ids": token_ids,
            # every assistant turn of a conversation, the answer of a single turn
            "completion_mask": [
                [0] * s + (m if m is not None else [1] * (len(t) - s))
                for t, s, m in zip(token_ids, starts, masks, strict=True)
            ],
            "completion_start": starts,
            "teacher_topk_ids": topk_ids,
            "teacher_topk_logprobs": topk_logprobs,
        }

    if "completion_mask" not in rows.column_names:  # scored by an earlier version: one turn each
        rows = rows.add_column("completion_mask", [None] * len(rows))
    columns = ["token_ids", "completion_start", "completion_mask", "teacher_topk_ids", "teacher_topk_logprobs"]
    return _form(rows, build, columns, "top-k rows")


def _form(rows: Dataset, build, columns: list[str], what: str, features: Features | None = None) -> Dataset:
    """`build` over `columns` a batch at a time, the result written next to `rows` (memory-mapped) and nothing
    else of theirs kept; `features` types the result where its first batch cannot say."""
    return rows.map(
        build, batched=True, input_columns=columns, remove_columns=rows.column_names, desc=what, features=features
    )
