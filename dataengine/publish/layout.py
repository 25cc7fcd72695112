"""The Hub dataset layout: `data/<config>/<split>-NNNNN-of-NNNNN.parquet`, configs per kind and language.

`datasets` maps these names to splits, and the card's `configs:` front matter names each config's files,
so `load_dataset(folder)` and `load_dataset(folder, CONFIG)` work on the folder and on the Hub alike.
"""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow.parquet as pq
from datasets import Dataset, DatasetInfo, Features, SplitDict, SplitInfo, disable_progress_bars
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCardData

from dataengine.errors import UserError
from dataengine.target.send import DEFAULT


def config_rows(rows: list[dict], configs: list[str]) -> dict[str, list[dict]]:
    """`default` holds every row; `kind` adds one config per kind (chat, code), `language` one per language."""
    out = {DEFAULT: rows}
    for field in configs:
        for value in sorted({row[field] for row in rows}):
            if value in out:
                raise UserError(f"publish.configs: the {field} {value!r} would name a config that already exists")
            out[value] = [row for row in rows if row[field] == value]
    return out


def write_layout(
    rows: list[dict],
    features: Features,
    folder: Path,
    configs: list[str],
    test_ids: set[str],
    shard_rows: int,
    tag: str = "",
) -> dict[str, dict[str, int]]:
    """Write every config's train and test parquet shards under `folder/data`; rows per config and split.

    One set of test ids for every config, so a row is in the test split of each config it belongs to, or
    in none. `tag` goes into every shard's name: an appending publish names its shards after its run, so
    they sit beside the shards already published and never replace one.
    """
    return {
        name: write_config(subset, features, folder, name, test_ids, shard_rows, tag)
        for name, subset in config_rows(rows, configs).items()
    }


def count_layout(rows: list[dict], configs: list[str], test_ids: set[str]) -> dict[str, dict[str, int]]:
    """Rows per config and split, as `write_layout` would write them (an appending publish writes only its own
    rows, and counts every row the dataset then holds)."""
    counts: dict[str, dict[str, int]] = {}
    for name, subset in config_rows(rows, configs).items():
        tested = sum(row["id"] in test_ids for row in subset)
        counts[name] = {split: n for split, n in (("train", len(subset) - tested), ("test", tested)) if n}
    return counts


def write_config(
    rows: list[dict], features: Features, folder: Path, name: str, test_ids: set[str], shard_rows: int, tag: str = ""
) -> dict[str, int]:
    """One config's train and test shards under `folder/data/<name>`; rows per split."""
    disable_progress_bars()  # one bar per small file is noise
    counts = {}
    for split, part in (
        ("train", [r for r in rows if r["id"] not in test_ids]),
        ("test", [r for r in rows if r["id"] in test_ids]),
    ):
        if part:
            _write_split(part, features, folder / "data" / name, split, shard_rows, tag)
            counts[split] = len(part)
    return counts


def _write_split(rows: list[dict], features: Features, folder: Path, split: str, shard_rows: int, tag: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    shards = math.ceil(len(rows) / shard_rows)
    for i in range(shards):
        part = rows[i * shard_rows : (i + 1) * shard_rows]
        columns = {name: [row.get(name) for row in part] for name in features}
        path = folder / f"{split}-{tag}{i:05d}-of-{shards:05d}.parquet"
        Dataset.from_dict(columns, features=features).to_parquet(str(path))


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
