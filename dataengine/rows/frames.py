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
    """The rows of a stage folder, lazily; None when it holds no shards. Columns a shard of an older run lacks
    read as null, as `rows.conform` reads them."""
    paths = shard_paths(folder)
    if not paths:
        return None
    return pl.scan_parquet(paths, missing_columns="insert", extra_columns="ignore")
