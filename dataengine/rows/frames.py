"""A stage's rows as a polars LazyFrame: a lazy scan over its parquet shards, so a query over a million rows reads
only the columns and row groups it needs and holds at most what it returns or aggregates."""

from __future__ import annotations

from pathlib import Path

import polars as pl


def shard_paths(folder: Path) -> list[Path]:
    """A stage folder's shards: `data/*.parquet`, or a published dataset's default config
    (`data/default/*.parquet`: every row once, whatever other configs it has)."""
    shards = sorted((folder / "data").glob("*.parquet"))
    return shards or sorted((folder / "data" / "default").glob("*.parquet"))


def scan(folder: Path) -> pl.LazyFrame | None:
    """The rows of a stage folder, lazily; None when it holds no shards. Its columns are every shard's (a published
    dataset appended to by several versions may hold shards with fewer columns): a shard that lacks one reads it
    as null, as `rows.conform` reads them."""
    paths = shard_paths(folder)
    if not paths:
        return None
    schema: dict[str, pl.DataType] = {}
    for path in paths:  # the footers only
        for name, dtype in pl.read_parquet_schema(path).items():
            schema.setdefault(name, dtype)
    return pl.scan_parquet(paths, schema=schema, missing_columns="insert")
