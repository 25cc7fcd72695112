"""Rows in the order of some of their columns, through sorted runs spilled to parquet (`sorted_rows`): pyarrow
sorts in memory only and datatrove has no sort step."""

from __future__ import annotations

import heapq
import itertools
import operator
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Features

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
