"""Shards written a batch at a time: names `datasets` maps to splits, exact columns, nothing half-written."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import load_dataset

from dataengine.publish.layout import count_layout, marked, write_layout
from dataengine.rows import (
    PUBLISHED_FEATURES,
    ROUTED_FEATURES,
    SAMPLE_FEATURES,
    ShardWriter,
    batch_key,
    held_out_ids,
    ids_key,
    iter_rows,
    read_ids,
    shards,
    sort,
    write_shards,
)
from dataengine.target.existing import read_index


def _rows(n: int, start: int = 0):
    for i in range(start, start + n):
        yield {
            "id": f"r{i:06d}",
            "kind": "code" if i % 3 == 0 else "chat",
            "language": ("en", "fr")[i % 2],
            "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}],
            "sampling": {"temperature": 0.7},
            "seed": i,
        }


def test_shards_roll_over_and_load_as_one_split(tmp_path):
    with ShardWriter(tmp_path, "train", SAMPLE_FEATURES, rows_per_shard=400, batch_rows=150) as writer:
        for row in _rows(1000):
            writer.write(row)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"train-{i:05d}-of-00003.parquet" for i in range(3)]
    assert [pq.read_metadata(tmp_path / n).num_rows for n in names] == [400, 400, 200]
    assert writer.rows == 1000
    loaded = load_dataset("parquet", data_files=str(tmp_path / "train-*.parquet"), split="train")
    assert loaded.features == SAMPLE_FEATURES  # the schema's columns and types, not what the rows happened to hold
    assert loaded["id"] == [f"r{i:06d}" for i in range(1000)]
    assert loaded[7]["sampling"]["temperature"] == pytest.approx(0.7) and loaded[7]["persona"] is None


def test_a_failed_write_leaves_no_parquet_file(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "ROW_GROUP_BYTES", 1)  # every batch its own row group: shards are on disk early
    with pytest.raises(RuntimeError), ShardWriter(tmp_path, "train", SAMPLE_FEATURES, 10, batch_rows=5) as writer:
        for row in _rows(25):
            writer.write(row)
        assert len(list(tmp_path.glob("*.part"))) == 3  # written so far, under names no reader globs
        raise RuntimeError("the stage failed half-way")
    assert not list(tmp_path.iterdir())


def test_a_row_that_fails_at_close_leaves_nothing_either(tmp_path):
    writer = ShardWriter(tmp_path, "train", SAMPLE_FEATURES, rows_per_shard=10)
    with pytest.raises(ValueError, match="not a number"), writer:
        for row in _rows(25):
            writer.write(row)
        writer.write({"id": "bad", "seed": "not a number"})  # only converted when the writer closes
    assert not list(tmp_path.iterdir())


def test_small_rows_make_one_row_group_per_shard(tmp_path):
    (path,) = write_shards(_rows(3000), tmp_path, features=SAMPLE_FEATURES)
    meta = pq.read_metadata(path)
    assert (meta.num_rows, meta.num_row_groups) == (3000, 1)
    assert b"content_defined_chunking" in meta.metadata  # written as `datasets` writes parquet


def test_no_rows_still_make_one_loadable_shard(tmp_path):
    assert write_shards(iter(()), tmp_path / "stage", features=SAMPLE_FEATURES) == [
        tmp_path / "stage" / "data" / "train-00000-of-00001.parquet"
    ]
    assert pq.read_schema(tmp_path / "stage" / "data" / "train-00000-of-00001.parquet").names == list(SAMPLE_FEATURES)
    assert list(iter_rows(tmp_path / "stage")) == [] and len(read_ids(tmp_path / "stage")) == 0


def test_numpy_values_are_written_as_lists(tmp_path):
    rows = [{"id": "a", "kept": True, "routing_signature": np.arange(6, dtype=np.int64).reshape(2, 3)}]
    write_shards(rows, tmp_path, features=ROUTED_FEATURES)
    assert next(iter_rows(tmp_path))["routing_signature"] == [[0, 1, 2], [3, 4, 5]]


def test_a_layout_written_batch_by_batch_holds_each_row_once_per_config(tmp_path):
    write_shards(_rows(2500), tmp_path / "curated", features=SAMPLE_FEATURES)
    ids = read_ids(tmp_path / "curated")
    test_ids = held_out_ids(ids, 0.1)
    assert test_ids == held_out_ids(ids.to_pylist(), 0.1)  # arrow ids draw as Python's do
    test_array = pa.array(sorted(test_ids))
    batches = (
        marked(batch, test_array)
        for path in sorted((tmp_path / "curated" / "data").glob("*.parquet"))
        for batch in pq.ParquetFile(path).iter_batches(batch_size=700)
    )
    counts = write_layout(batches, PUBLISHED_FEATURES, tmp_path / "out", ["kind"], shard_rows=1000)
    assert counts == count_layout(
        read_index(sorted((tmp_path / "curated" / "data").glob("*.parquet"))), ["kind"], test_array
    )
    assert counts["default"] == {"train": 2250, "test": 250}
    assert sum(counts["code"].values()) == 834 and sum(counts["chat"].values()) == 1666
    for config, splits in counts.items():
        for split, n in splits.items():
            loaded = load_dataset("parquet", data_files=str(tmp_path / "out" / "data" / config / f"{split}-*.parquet"))
            got = loaded["train"]["id"]
            assert len(got) == len(set(got)) == n
            assert (set(got) <= test_ids) == (split == "test")
    assert sorted(p.name for p in (tmp_path / "out" / "data" / "default").iterdir()) == [
        "test-00000-of-00001.parquet",
        "train-00000-of-00003.parquet",
        "train-00001-of-00003.parquet",
        "train-00002-of-00003.parquet",
    ]


def test_the_held_out_draw_depends_only_on_the_ids():
    ids = [f"row-{i}" for i in range(200)]
    held = held_out_ids(ids, 0.1)
    assert len(held) == 20 and held == held_out_ids(list(reversed(ids)), 0.1)
    assert held < held_out_ids(ids, 0.2)


def test_the_key_of_arrow_ids_is_the_key_of_the_sorted_python_ids():
    ids = [f"row-{i}" for i in range(200_000, 0, -3)] + ["é", "z", "Ä"]  # more than one slice, and non-ASCII
    assert ids_key(pa.chunked_array([ids[:500], ids[500:]])) == batch_key(sorted(ids))


def test_rows_sort_through_spilled_runs_and_the_spill_is_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(sort, "SPILL_ROWS", 40)
    given = list(_rows(250))
    random.Random(0).shuffle(given)
    given += [{**given[7]}, {**given[90], "language": "ß"}]  # a replayed row, and a non-ASCII language
    spill = tmp_path / "spill"
    out = sort.sorted_rows(iter(given), ["kind", "language", "id"], SAMPLE_FEATURES, spill)
    first = next(out)
    assert len(list(spill.iterdir())) == 7  # 252 rows in runs of 40, each sorted on its own
    got = [first, *out]
    key = [(r["kind"], r["language"], r["id"]) for r in got]
    assert key == sorted((r["kind"], r["language"], r["id"]) for r in given)
    assert got[0]["messages"][0]["content"].startswith("q") and got[0]["sampling"]["temperature"] == pytest.approx(0.7)
    assert sum(r["id"] == given[7]["id"] for r in got) == 2  # side by side: the caller writes one
    assert not spill.exists()


@pytest.mark.parametrize(
    ("limits", "runs_left"),
    [
        ({"SPILL_ROWS": 40, "FAN_IN": 3}, 3),  # 7 runs, merged 3 at a time into longer ones: 7 -> 5 -> 3
        ({"SPILL_ROWS": 1000, "SPILL_BYTES": 1, "_BLOCK": 16}, 16),  # a run per block once the bytes are spent
    ],
)
def test_runs_are_bounded_by_bytes_and_merged_a_bounded_number_at_a_time(tmp_path, monkeypatch, limits, runs_left):
    for name, value in limits.items():
        monkeypatch.setattr(sort, name, value)
    given = list(_rows(252))
    random.Random(1).shuffle(given)
    spill = tmp_path / "spill"
    out = sort.sorted_rows(iter(given), ["id"], SAMPLE_FEATURES, spill)
    first = next(out)
    assert len(list(spill.iterdir())) == runs_left
    assert [first["id"], *(r["id"] for r in out)] == sorted(r["id"] for r in given)
    assert not spill.exists()
