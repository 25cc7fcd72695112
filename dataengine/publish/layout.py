"""The Hub dataset layout: `data/<config>/<split>-NNNNN-of-NNNNN.parquet`, configs per kind and language.

`datasets` maps these names to splits, and the card's `configs:` front matter names each config's files,
so `load_dataset(folder)` and `load_dataset(folder, CONFIG)` work on the folder and on the Hub alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets import DatasetInfo, Features, SplitDict, SplitInfo
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCardData

from dataengine.errors import UserError
from dataengine.rows import ShardWriter, queries
from dataengine.target.send import DEFAULT


def config_masks(index: pa.Table | pa.RecordBatch, configs: list[str], default: str = DEFAULT) -> dict[str, pa.Array]:
    """Which rows each config holds: `default` every row; `kind` adds one config per kind (chat, code),
    `language` one per language. `index` needs the rows' kind and language columns."""
    out = {default: pa.array(np.ones(index.num_rows, dtype=bool))}
    for field in configs:
        column = index.column(field)
        for value in sorted(pc.unique(column).to_pylist()):
            if value in out:
                raise UserError(f"publish.configs: the {field} {value!r} would name a config that already exists")
            out[value] = pc.equal(column, value)
    return out


def count_layout(index: pa.Table, configs: list[str], test_ids: pa.Array) -> dict[str, dict[str, int]]:
    """Rows per config and split of the dataset `index` lists (its rows' id, kind and language): an appending
    publish writes only its own rows, and counts every row the dataset then holds."""
    rows, tested = pl.from_arrow(index).lazy(), pl.Series(test_ids, dtype=pl.String)
    counts: dict[str, dict[str, int]] = {}
    for field in [None, *configs]:
        for value, n, test in queries.split_counts(rows, tested, by=field):
            name = DEFAULT if field is None else value
            if name in counts:
                raise UserError(f"publish.configs: the {field} {value!r} would name a config that already exists")
            counts[name] = {split: k for split, k in (("train", n - test), ("test", test)) if k}
    return counts


def write_layout(
    batches: Iterable[tuple[pa.Table | pa.RecordBatch, pa.Array]],
    features: Features,
    folder: Path,
    configs: list[str],
    shard_rows: int,
    tag: str = "",
    default: str = DEFAULT,
) -> dict[str, dict[str, int]]:
    """Write every config's train and test parquet shards under `folder/data`, a batch of rows at a time; rows
    per config and split. Each batch comes with its test mask (a bool per row, true for the test split): the
    caller marks every row once, where `pc.is_in` per batch would hash every test id again for each batch.

    One test mask for every config, so a row is in the test split of each config it belongs to, or
    in none. `tag` goes into every shard's name: an appending publish names its shards after its run, so
    they sit beside the shards already published and never replace one.
    """
    writers: dict[tuple[str, str], ShardWriter] = {}
    try:
        for batch, is_test in batches:
            if not batch.num_rows:
                continue
            for name, mask in config_masks(batch, configs, default).items():
                for split, in_split in (("train", pc.invert(is_test)), ("test", is_test)):
                    part = batch.filter(pc.and_(mask, in_split))
                    if part.num_rows:
                        if (name, split) not in writers:
                            writers[name, split] = ShardWriter(folder / "data" / name, split, features, shard_rows, tag)
                        writers[name, split].write_table(part)
        for writer in writers.values():
            writer.close()
    except BaseException:
        for writer in writers.values():
            writer.abort()  # also the shards of those that closed: the layout is whole or absent
        raise
    counts: dict[str, dict[str, int]] = {}
    for (name, split), writer in writers.items():
        counts.setdefault(name, {})[split] = writer.rows
    return {name: dict(sorted(splits.items(), key=lambda s: s[0] != "train")) for name, splits in counts.items()}


def marked(table: pa.Table, test_ids: pa.Array) -> tuple[pa.Table, pa.Array]:
    """Rows in hand with their test mask, as `write_layout` takes them."""
    return table, pc.is_in(table.column("id"), value_set=test_ids)


def card_configs(counts: dict[str, dict[str, int]]) -> list[dict]:
    """The `configs:` front matter that tells `datasets` (and the Hub viewer) which files make which split."""
    return [
        {
            "config_name": name,
            **({"default": True} if name == DEFAULT else {}),
            "data_files": [{"split": split, "path": f"data/{name}/{split}-*.parquet"} for split in splits],
        }
        for name, splits in counts.items()
    ]


def add_dataset_infos(
    card_data: DatasetCardData,
    folder: Path,
    counts: dict[str, dict[str, int]],
    features: Features,
    config_features: dict[str, Features] | None = None,
    earlier: dict[str, dict] | None = None,
) -> None:
    """The `dataset_info` front matter `push_to_hub` writes: features, rows and bytes per split (uncompressed
    parquet bytes, close to what `push_to_hub` counts in Arrow). Besides
    informing the Hub viewer, it is part of the key `datasets` caches a local folder under (file mtimes are
    not, when the card names the configs), so a folder that gained rows is not served from a stale cache.
    `config_features` names the configs whose columns are not `features`. `earlier` holds the bytes of the
    shards already published that `folder` lacks (an appending publish: `existing.Published.sizes`)."""
    infos = DatasetInfosDict()
    for name, splits in counts.items():
        before = (earlier or {}).get(name, {})
        split_dict, download = SplitDict(), before.get("download_size", 0)
        for split, rows in splits.items():
            files = sorted((folder / "data" / name).glob(f"{split}-*.parquet"))
            download += sum(path.stat().st_size for path in files)
            metadata = [pq.read_metadata(path) for path in files]
            in_memory = sum(m.row_group(i).total_byte_size for m in metadata for i in range(m.num_row_groups))
            in_memory += before.get("splits", {}).get(split, 0)
            split_dict.add(SplitInfo(name=split, num_examples=rows, num_bytes=in_memory))
        infos[name] = DatasetInfo(
            # the preference config has columns of its own; every other config the rows'
            features=(config_features or {}).get(name, features),
            splits=split_dict,
            download_size=download,
            dataset_size=sum(s.num_bytes for s in split_dict.values()),
        )
    infos.to_dataset_card_data(card_data)
