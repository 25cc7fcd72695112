"""Parquet shards in and out: a stage's rows written a batch at a time (`ShardWriter`, `stage_writer`,
`write_shards`) and read back whole, a batch at a time or as arrays (`read_rows`, `iter_rows`, `read_ids`,
`read_matrices`)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Features

from dataengine.rows.schema import SAMPLE_FEATURES

ROWS_PER_SHARD = 50_000
# a row group's rows in arrow, at most: what a writer holds before writing (a publish has a writer per config and
# split, so this times their number is what it may hold)
ROW_GROUP_BYTES = 16 * 1024 * 1024
# what `datasets` writes parquet with (datasets.config.DEFAULT_CDC_OPTIONS)
CDC_OPTIONS = {"min_chunk_size": 256 * 1024, "max_chunk_size": 1024 * 1024, "norm_level": 0}


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
