"""The rows every stage passes on: their columns (listed once), parquet shards in and out, and the small
readings of a row that several stages make (its prompt, its answer, its group, its held-out draw).

Columns are added from stage to stage, never renamed: a generated row is a curated row with some columns
still empty, and a scored row is a curated row with the teacher's logprobs.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import math
import operator
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets import Features, List, Value

SAMPLE_FEATURES = Features(
    {
        "id": Value("string"),
        "messages": List({"role": Value("string"), "content": Value("string")}),
        "kind": Value("string"),
        "language": Value("string"),
        "topic": Value("string"),
        "persona": Value("string"),  # who the question was asked as (generate.chat.personas), else null
        "task": Value("string"),
        # provenance
        "teacher_model": Value("string"),
        "teacher_revision": Value("string"),
        "sampling": {
            "temperature": Value("float32"),
            "top_p": Value("float32"),
            "max_tokens": Value("int32"),
            "frequency_penalty": Value("float32"),
            "presence_penalty": Value("float32"),
        },
        "seed": Value("int64"),
        "rollout_index": Value("int32"),
        "finish_reason": Value("string"),
        "prompt_tokens": Value("int32"),
        "completion_tokens": Value("int32"),
        "instruction": Value("string"),
        "question_finish_reason": Value("string"),
        "run_id": Value("string"),
        "recipe_hash": Value("string"),
        "created_at": Value("string"),
        # code tasks, parsed from the structured answer
        "code_problem": Value("string"),
        "code_solution": Value("string"),
        "code_tests": Value("string"),
        "code_parse_error": Value("string"),
        # the experts each answer token went to, as the teacher's vLLM returned them (teacher.return_routed_experts):
        # base64 .npy of [answer tokens - 1, layers, top_k] expert ids; null when the server did not return them
        "teacher_routing": Value("string"),
    }
)

# every criterion a judge's rubric scores (data/rubric.yaml)
JUDGE_CRITERIA = ("helpfulness", "correctness", "instruction_following", "language", "tests_meaningful")

# Curation adds quality signals, dedup clusters and, on rejected rows, why and where they were dropped.
CURATED_FEATURES = Features(
    {
        **SAMPLE_FEATURES,
        "language_detected": Value("string"),
        "language_confidence": Value("float32"),
        "tests_passed": Value("bool"),
        "test_runtime_s": Value("float32"),
        "test_output": Value("string"),
        "contaminated_by": Value("string"),
        "dedup_cluster_id": Value("string"),
        "dedup_cluster_size": Value("int32"),
        # the judge stage's verdict (curate.judge): 1-5 per criterion (null where its rubric has none), their
        # mean, the judge's one-sentence rationale, and which model judged; null without a judge
        "judge_scores": {name: Value("int8") for name in JUDGE_CRITERIA},
        "judge_score": Value("float32"),
        "judge_rationale": Value("string"),
        "judge_model": Value("string"),
        "drop_reason": Value("string"),
        "drop_step": Value("string"),
    }
)

# Kept rows have no drop reason: those columns only mean something among the rejected ones.
KEPT_FEATURES = Features({k: v for k, v in CURATED_FEATURES.items() if k not in ("drop_reason", "drop_step")})

# A published row: the teacher's per-token routing stays in the run (the routing map summarises it), it
# would multiply a row's size by its answer length x layers x top_k.
PUBLISHED_FEATURES = Features({k: v for k, v in KEPT_FEATURES.items() if k != "teacher_routing"})

# The route stage's rows: a routing signature per kept (and rejected) row.
ROUTED_FEATURES = Features(
    {
        "id": Value("string"),
        "kind": Value("string"),
        "language": Value("string"),
        "topic": Value("string"),
        "kept": Value("bool"),
        "answer_tokens": Value("int32"),
        # [layers][experts]: answer-token slots routed to each expert (top_k per token and layer)
        "routing_signature": List(List(Value("int32"))),
        "router_entropy": Value("float32"),  # nats, mean over answer tokens and layers
        "router_margin": Value("float32"),  # top-1 minus top-2 router probability, mean
        "routed_by": Value("string"),  # vllm: returned with the answer (no router probabilities); replay
    }
)

# Scoring adds the teacher's top-k logprobs for every answer token.
SCORED_FEATURES = Features(
    {
        **CURATED_FEATURES,
        "token_ids": List(Value("int32")),  # prompt + answer, with the teacher's chat template
        "completion_start": Value("int32"),  # index of the answer's first token in token_ids
        # one entry per answer token, best first: the teacher's distribution for that position
        "teacher_topk_ids": List(List(Value("int32"))),
        "teacher_topk_logprobs": List(List(Value("float32"))),
    }
)

# A preference pair (curate.judge.pairs), TRL's conversational preference format: the prompt's turns, the
# chosen and the rejected answer, and which rows and scores they came from.
_TURNS = List({"role": Value("string"), "content": Value("string")})
PREFERENCE_FEATURES = Features(
    {
        "id": Value("string"),
        "prompt": _TURNS,
        "chosen": _TURNS,
        "rejected": _TURNS,
        "chosen_id": Value("string"),
        "rejected_id": Value("string"),
        "chosen_score": Value("float32"),
        "rejected_score": Value("float32"),
        "kind": Value("string"),
        "language": Value("string"),
        "judge_model": Value("string"),
    }
)

ROWS_PER_SHARD = 50_000
# a row group's rows in arrow, at most: what a writer holds before writing (a publish has a writer per config and
# split, so this times their number is what it may hold)
ROW_GROUP_BYTES = 16 * 1024 * 1024
# what `datasets` writes parquet with (datasets.config.DEFAULT_CDC_OPTIONS)
CDC_OPTIONS = {"min_chunk_size": 256 * 1024, "max_chunk_size": 1024 * 1024, "norm_level": 0}


# --------------------------------------------------------------------------- writing


def conform(table: pa.Table | pa.RecordBatch, schema: pa.Schema) -> pa.Table:
    """A table with exactly `schema`'s columns, in its order and types: extra columns dropped, missing ones
    null (rows of an older run lack a newer column)."""
    table = table if isinstance(table, pa.Table) else pa.Table.from_batches([table])
    columns = [
        table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


class ShardWriter:
    """Rows into `<folder>/<split>-<tag>NNNNN-of-NNNNN.parquet` (the names `datasets` maps to a split), a batch
    at a time: a stage never holds all its rows to write them. A new shard every `rows_per_shard` rows; one
    (empty) shard for no rows, so the folder still loads with its columns. Rows are gathered into row groups
    of up to `ROW_GROUP_BYTES`, written with the options `datasets` writes parquet with (content-defined
    chunks, so the Hub stores a re-sent shard's unchanged parts once; a page index).

    Written here, not with datatrove's ParquetWriter or `Dataset.to_parquet`: the shard count is known only at
    the end, and the `-of-NNNNN` names `datasets` expects need it, so shards are written as `.part` files and
    renamed on `close`; a failure leaves no `.parquet` file behind, whole or half.
    """

    def __init__(
        self,
        folder: Path,
        split: str,
        features: Features,
        rows_per_shard: int = ROWS_PER_SHARD,
        tag: str = "",
        batch_rows: int = 1000,
    ) -> None:
        self.folder, self.split, self.tag = folder, split, tag
        self.features = features
        self.schema = features.arrow_schema  # with the features in its metadata, as `datasets` writes them
        self.rows_per_shard, self.batch_rows = rows_per_shard, batch_rows
        self.rows = 0
        self.paths: list[Path] = []  # the shards, once closed
        self._parts: list[Path] = []
        self._writer: pq.ParquetWriter | None = None
        self._in_shard = 0
        self._pending: list[dict] = []  # rows as given, made into a table every batch_rows
        self._group: list[pa.Table] = []  # tables waiting to make one row group
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, row: dict) -> None:
        self._pending.append(row)
        if len(self._pending) >= self.batch_rows:
            self._tabulate()

    def write_table(self, table: pa.Table | pa.RecordBatch) -> None:
        """Rows already in arrow (read from another stage's shards): no Python objects made for them."""
        self._tabulate()
        self._group.append(conform(table, self.schema))
        if sum(t.nbytes for t in self._group) >= ROW_GROUP_BYTES:
            self._write_group()

    def _tabulate(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, []
            try:
                table = pa.Table.from_pylist(pending, schema=self.schema)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                # numpy values (a routing signature): `datasets` encodes them to Python lists, as `from_dict` would
                columns = {name: [row.get(name) for row in pending] for name in self.schema.names}
                table = pa.Table.from_pydict(self.features.encode_batch(columns), schema=self.schema)
            self.write_table(table)

    def _write_group(self) -> None:
        table = pa.concat_tables(self._group) if self._group else self.schema.empty_table()
        self._group = []
        while table.num_rows:
            writer = self._shard()  # a new one when this one is full
            part = table.slice(0, self.rows_per_shard - self._in_shard)
            writer.write_table(part, row_group_size=part.num_rows)
            self._in_shard += part.num_rows
            self.rows += part.num_rows
            table = table.slice(part.num_rows)

    def _shard(self) -> pq.ParquetWriter:
        if self._writer is None or self._in_shard >= self.rows_per_shard:
            if self._writer is not None:
                self._writer.close()
            self._parts.append(self.folder / f"{self.split}-{self.tag}{len(self._parts):05d}.parquet.part")
            self._writer = pq.ParquetWriter(
                self._parts[-1], self.schema, use_content_defined_chunking=CDC_OPTIONS, write_page_index=True
            )
            self._writer.add_key_value_metadata({"content_defined_chunking": json.dumps(CDC_OPTIONS)})
            self._in_shard = 0
        return self._writer

    def close(self) -> list[Path]:
        """The shards, under their final names; nothing (no part, no shard) when that fails."""
        if self.paths:
            return self.paths
        try:
            self._tabulate()
            self._write_group()
            if self._writer is None:
                self._shard()  # no rows: one empty shard
            self._writer.close()
            total = len(self._parts)
            names = [self.folder / f"{self.split}-{self.tag}{i:05d}-of-{total:05d}.parquet" for i in range(total)]
            for part, name in zip(self._parts, names, strict=True):
                os.replace(part, name)
        except BaseException:
            self.abort()
            raise
        self.paths = names
        return names

    def abort(self) -> None:
        """Remove what was written, under either name."""
        try:
            if self._writer is not None:
                self._writer.close()
        finally:
            total = len(self._parts)
            for i, part in enumerate(self._parts):
                part.unlink(missing_ok=True)
                (self.folder / f"{self.split}-{self.tag}{i:05d}-of-{total:05d}.parquet").unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, kind, *_) -> None:
        self.abort() if kind is not None else self.close()


def write_parquet(rows: list[dict], path: Path, features: Features) -> Path:
    """One small parquet file with exactly the schema's columns, whole or absent (written aside, then renamed)."""
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(pa.Table.from_pylist(rows, schema=features.arrow_schema), tmp)
    os.replace(tmp, path)
    return path


def stage_writer(stage_folder: Path, features: Features, split: str = "train") -> ShardWriter:
    """A `ShardWriter` for a stage's rows, under `<stage_folder>/data/`."""
    return ShardWriter(stage_folder / "data", split, features)


def write_shards(
    rows: Iterable[dict], stage_folder: Path, split: str = "train", features: Features = SAMPLE_FEATURES
) -> list[Path]:
    """A stage's rows, under `<stage_folder>/data/`, streamed through a `ShardWriter`."""
    with stage_writer(stage_folder, features, split) as writer:
        for row in rows:
            writer.write(row)
    return writer.paths


SPILL_ROWS = 10_000  # rows `sorted_rows` holds at once (a generated row is a few kilobytes)
# ... or fewer, when they take more: a row with the teacher's routing of a Qwen3-30B-A3B answer is ~150 KB
SPILL_BYTES = 64 * 1024 * 1024
FAN_IN = 128  # runs merged at once: the merge holds a row group of each
_GROUP_BYTES = 512 * 1024  # a spilled run's row groups, in arrow bytes
_BLOCK = 256  # rows made into arrow at a time, to measure them as they come


def sorted_rows(rows: Iterable[dict], by: list[str], features: Features, spill: Path) -> Iterator[dict]:
    """`rows` in the order of their `by` columns (none of them null), holding at most `SPILL_ROWS` of them
    (and `SPILL_BYTES` of arrow) at once: each run of that many is sorted in arrow and spilled to a parquet file
    under `spill`; runs are merged `FAN_IN` at a time into longer ones until that many are left, then merged
    as they are read, a row group of each at a time. Written here because pyarrow sorts in memory only and
    datatrove has no sort step. `spill` is removed once the rows are through."""
    shutil.rmtree(spill, ignore_errors=True)
    spill.mkdir(parents=True)
    schema, order = features.arrow_schema, [(c, "ascending") for c in by]
    key = operator.itemgetter(*by)
    runs: list[Path] = []
    names = (spill / f"run-{n:05d}.parquet" for n in itertools.count())

    try:
        for batches in _spans(rows, schema):
            runs.append(_write_run([pa.Table.from_batches(batches, schema).sort_by(order)], schema, next(names)))
        # arrow orders strings by their UTF-8 bytes, which is Python's code point order: the runs merge as sorted
        while len(runs) > FAN_IN:
            merged = heapq.merge(*(_run_rows(path) for path in runs[:FAN_IN]), key=key)
            blocks = (pa.Table.from_pylist(block, schema) for block in _blocks(merged, _BLOCK))
            done = _write_run(blocks, schema, next(names))
            for path in runs[:FAN_IN]:
                path.unlink()
            runs = runs[FAN_IN:] + [done]
        yield from heapq.merge(*(_run_rows(path) for path in runs), key=key)
    finally:
        shutil.rmtree(spill, ignore_errors=True)


def _spans(rows: Iterable[dict], schema: pa.Schema) -> Iterator[list[pa.RecordBatch]]:
    """`rows` as arrow, in spans of at most `SPILL_ROWS` rows and about `SPILL_BYTES` (a block over)."""
    span: list[pa.RecordBatch] = []
    held = size = 0
    for block in _blocks(rows, min(_BLOCK, SPILL_ROWS)):
        batch = pa.RecordBatch.from_pylist(block, schema)
        if span and (held + batch.num_rows > SPILL_ROWS or size >= SPILL_BYTES):
            yield span
            span, held, size = [], 0, 0
        span.append(batch)
        held, size = held + batch.num_rows, size + batch.nbytes
    if span:
        yield span


def _blocks(rows: Iterable[dict], size: int) -> Iterator[list[dict]]:
    given = iter(rows)
    while block := list(itertools.islice(given, size)):
        yield block


def _write_run(tables: Iterable[pa.Table], schema: pa.Schema, path: Path) -> Path:
    """A sorted run, in row groups of about `_GROUP_BYTES` each (the merge holds one of every run)."""
    with pq.ParquetWriter(path, schema) as writer:
        for table in tables:
            writer.write_table(table, row_group_size=max(1, table.num_rows * _GROUP_BYTES // max(table.nbytes, 1)))
    return path


def _run_rows(path: Path) -> Iterator[dict]:
    run = pq.ParquetFile(path)
    for group in range(run.num_row_groups):
        yield from run.read_row_group(group).to_pylist()


# --------------------------------------------------------------------------- reading


def read_parquet(files: Iterable[Path], columns: list[str] | None = None) -> list[dict]:
    """Rows of parquet files, all columns or those of `columns` a file has (runs made by an older version
    may lack a newer column)."""
    # pyarrow rather than Dataset.from_parquet, which refuses a shard with no rows ("corresponds to no
    # data"): a stage that kept nothing must read as no rows, so the next stage can say so
    rows: list[dict] = []
    for path in files:
        have = None if columns is None else [c for c in columns if c in pq.read_schema(path).names]
        rows += pq.read_table(path, columns=have).to_pylist()
    return rows


def shard_files(stage_folder: Path) -> list[Path]:
    """A stage's shards: `<stage_folder>/data/*.parquet`."""
    return sorted((stage_folder / "data").glob("*.parquet"))


def read_rows(stage_folder: Path, columns: list[str] | None = None) -> list[dict]:
    """Every row of a stage's shards, in a list (no rows when it has none): for small folders, tests and benches;
    the stages read theirs a batch at a time (`iter_rows`) or memory-mapped (`train.data.load_rows`)."""
    return read_parquet(shard_files(stage_folder), columns)


def read_ids(stage_folder: Path) -> pa.Array:
    """The ids of a stage's rows, as one arrow array: a million of them take megabytes, not a Python set's
    hundred."""
    ids = [pq.read_table(path, columns=["id"]).column("id") for path in shard_files(stage_folder)]
    return pa.chunked_array([c for col in ids for c in col.chunks], pa.string()).combine_chunks()


def iter_rows(stage_folder: Path, columns: list[str] | None = None, batch_rows: int = 1024) -> Iterator[dict]:
    """`read_rows` a batch at a time, for columns too large to hold for every row at once."""
    for path in shard_files(stage_folder):
        file = pq.ParquetFile(path)
        have = None if columns is None else [c for c in columns if c in file.schema_arrow.names]
        for batch in file.iter_batches(batch_size=batch_rows, columns=have):
            yield from batch.to_pylist()


def read_matrices(stage_folder: Path, column: str) -> tuple[list[str], np.ndarray]:
    """The rows' ids and a List(List(number)) column as one [rows, outer, inner] array, read by pyarrow
    without Python lists: a routing signature of a Qwen3-30B-shaped MoE is 48 x 128 numbers, and 100,000
    rows of them as Python ints would take 20 GB."""
    tables = [pq.read_table(p, columns=["id", column]) for p in sorted((stage_folder / "data").glob("*.parquet"))]
    table = pa.concat_tables(tables) if tables else None
    if table is None or not table.num_rows:
        return [], np.zeros((0, 0, 0), dtype=np.int64)
    lists = table.column(column).combine_chunks().flatten()  # one list per row and outer index
    inner = lists.value_lengths()[0].as_py()
    return table.column("id").to_pylist(), lists.flatten().to_numpy().reshape(table.num_rows, -1, inner)


# --------------------------------------------------------------------------- readings of a row


def last_user_turn(messages: list[dict]) -> str:
    """The question the answer answers."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def prompt_key(turns: list[dict]) -> str:
    """The turns before an answer as one string: rows (their messages but the last) and preference pairs
    (their `prompt`) with the same key answer the same prompt."""
    return json.dumps([[t["role"], t["content"]] for t in turns], ensure_ascii=False)


def answer(row: dict) -> str:
    messages = row.get("messages") or []
    return messages[-1]["content"] if messages else ""


def primary_language(tag: str) -> str:
    """The language subtag of a BCP-47 code (pt-BR -> pt), what language identification reports."""
    return tag.split("-")[0].lower()


class Group(NamedTuple):
    """A row's kind and language: the unit that quotas, top-up rounds and the report count rows in. Files
    holding a count per group (manifests, top_up.json) key it by `str(group)`, "kind/language"."""

    kind: str
    language: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.language}"

    @classmethod
    def of(cls, row: dict) -> Group:
        return cls(row["kind"], row["language"])

    @classmethod
    def parse(cls, key: str) -> Group:
        kind, _, language = key.partition("/")
        return cls(kind, language)


def count_groups(rows: Iterable[dict]) -> dict[str, int]:
    """Rows per group, as a file stores them: keyed by "kind/language", in group order."""
    return group_counts(Counter(Group.of(r) for r in rows))


def group_counts(counts: Counter[Group]) -> dict[str, int]:
    """Counts per group as a file stores them (rows counted one at a time, as they streamed by)."""
    return {str(g): n for g, n in sorted(counts.items())}


def batch_key(parts: Iterable[str]) -> str:
    """The name of a saved batch (its row ids, and anything else its result depends on): what a resumed stage
    looks for to skip the batch. The parts, joined by newlines, are hashed as they come: never held at once."""
    digest = hashlib.sha256()
    for i, part in enumerate(parts):
        digest.update((("\n" if i else "") + part).encode())
    return digest.hexdigest()[:16]


def ids_key(ids: pa.Array) -> str:
    """`batch_key(sorted(ids))` of ids in arrow (arrow sorts strings by their UTF-8 bytes, which is Python's code
    point order)."""
    return batch_key(_strings(pc.take(ids, pc.sort_indices(ids))))


def _strings(ids: pa.Array | pa.ChunkedArray, size: int = 65_536) -> Iterator[str]:
    """Arrow strings one at a time, made into Python objects a slice of `size` at a time."""
    for start in range(0, len(ids), size):
        yield from ids.slice(start, size).to_pylist()


def held_out_ids(ids: list[str] | pa.Array, eval_fraction: float, min_rows: int = 1) -> set[str]:
    """The held-out rows' ids: those that hash lowest, `eval_fraction` of them, raised to `min_rows` as far as that
    leaves training half the rows, and at least one of each from two rows. It depends only on the ids, so every
    stage draws the same split. `ids` in arrow are read a slice at a time."""
    n_eval = max(math.ceil(len(ids) * eval_fraction), min(min_rows, len(ids) // 2))
    n_eval = min(max(1, n_eval), len(ids) - 1) if len(ids) > 1 else 0
    every = _strings(ids) if isinstance(ids, pa.Array | pa.ChunkedArray) else ids
    # the n lowest, not a sort of every hash: a million ids' digests are not held at once (a digest's bytes sort
    # as its hex does)
    return set(heapq.nsmallest(n_eval, every, key=lambda i: hashlib.sha256(i.encode()).digest()))


def _ids(encoded) -> list[int]:
    # transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True)
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def prompt_and_full_ids(tokenizer, messages: list[dict]) -> tuple[list[int], int]:
    """Token ids of the whole conversation and where the final (assistant) answer starts. Scoring, offline
    distillation and evaluation must agree on which tokens are the answer, so it is computed here only."""
    prompt = _ids(tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True))
    full = _ids(tokenizer.apply_chat_template(messages, tokenize=True))
    if full[: len(prompt)] != prompt:
        raise ValueError("the chat template renders the prompt differently once the answer is appended")
    return full, len(prompt)
