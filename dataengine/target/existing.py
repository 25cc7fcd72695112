"""What a target already holds, for appending runs (`publish.append`, on in incremental scheduled runs).

Curation dedups new rows against the target's `data/default` rows, and publishing keeps those rows (in the
split they were published in) and adds only rows with new ids. The card's front matter carries the run
history, so each publish extends the history it finds there, wherever the earlier runs happened.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from huggingface_hub import DatasetCard

from dataengine.errors import UserError
from dataengine.recipe import PublishConfig, Target, parse_target
from dataengine.target.send import DEFAULT, MARK

HISTORY_KEY = "dataengine_runs"  # front-matter key of the run history
COMMIT = ".dataengine-commit"  # in a downloaded copy of a Hub target: the commit it is a copy of


# what publishing reads of the rows a target holds: enough to count configs and splits and to write the card
INDEX_COLUMNS = {"id": pa.string(), "kind": pa.string(), "language": pa.string(), "teacher_revision": pa.string()}
INDEX_SCHEMA = pa.schema(INDEX_COLUMNS)


def read_index(files: list[Path]) -> pa.Table:
    """The `INDEX_COLUMNS` of the rows in parquet `files`, in arrow: a million rows' take tens of megabytes."""
    return pa.concat_tables([_index_of(path) for path in files] or [INDEX_SCHEMA.empty_table()])


def _index_of(path: Path) -> pa.Table:
    have = set(pq.read_schema(path).names)  # rows of an older version may lack teacher_revision
    table = pq.read_table(path, columns=[name for name in INDEX_COLUMNS if name in have])
    return pa.table(
        {
            name: table.column(name).cast(kind) if name in have else pa.nulls(table.num_rows, kind)
            for name, kind in INDEX_COLUMNS.items()
        }
    )


@dataclass
class Published:
    """The target's rows (their `INDEX_COLUMNS`), its test split's ids and its card's run history (all empty for a
    new target)."""

    index: pa.Table = field(default_factory=INDEX_SCHEMA.empty_table)
    test_ids: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))
    history: list[dict] = field(default_factory=list)
    # config -> {"download_size": parquet bytes, "splits": {split: bytes}} of the shards published, from the
    # card's dataset_info: an appending publish adds its shards' to them without fetching every config
    sizes: dict[str, dict] = field(default_factory=dict)


def fetch(target: Target, revision: str | None, cache: Path) -> Path | None:
    """A local folder with the target's README.md and data/default/, or None when nothing is published yet.
    A folder target is read where it is; a Hub target is downloaded (those files only) into `cache`."""
    if target.kind == "folder":
        folder = Path(target.location)
        return folder if (folder / "data" / DEFAULT).is_dir() else None
    return _download(target, revision, cache)


def _download(target: Target, revision: str | None, cache: Path) -> Path | None:
    """The target's files at its current commit, downloaded into `cache` unless the copy there is of that commit:
    curation and publishing of one run share one copy (`RunFolder.target_copy`), and a target another run
    appended to in between is downloaded again."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    stamp = cache / COMMIT
    try:
        commit = HfApi().dataset_info(target.location, revision=revision).sha
        if not (stamp.is_file() and stamp.read_text() == commit):
            shutil.rmtree(cache, ignore_errors=True)  # snapshot_download never deletes: no stale shard may stay
            snapshot_download(
                target.location,
                repo_type="dataset",
                revision=commit,
                local_dir=str(cache),
                allow_patterns=["README.md", f"data/{DEFAULT}/*"],
            )
            stamp.write_text(commit)
    except (RepositoryNotFoundError, RevisionNotFoundError):
        return None  # the first publish creates it
    except HfHubHTTPError as exc:
        raise UserError(f"reading what {target} holds failed: {exc}") from None
    except (httpx.HTTPError, OSError) as exc:
        raise UserError(f"reading what {target} holds failed: cannot reach the Hub ({exc})") from None
    return cache if (cache / "data" / DEFAULT).is_dir() else None


def reference_folder(publish: PublishConfig, base_dir: Path, work: Path, own_ids: pa.Array, cache: Path) -> Path | None:
    """The target's `default` rows as a dedup reference folder (in `work`), when appending to a target that
    has rows (a Hub target fetched into `cache`). Rows of this run (`own_ids`, its generated ids) are left out:
    curating again after this run published must not drop its rows as copies of themselves. Only the columns
    dedup compares are copied, a batch at a time."""
    folder = fetch(parse_target(publish.to, base_dir), publish.revision, cache)
    if folder is None:
        return None
    _check_ours(folder)
    out = work / "reference"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    kept = 0
    for i, path in enumerate(sorted((folder / "data" / DEFAULT).glob("*.parquet"))):
        shard = pq.ParquetFile(path)
        schema = pa.schema([shard.schema_arrow.field(name) for name in _REFERENCE_COLUMNS])
        with pq.ParquetWriter(out / f"rows-{i:05d}.parquet", schema) as writer:
            for batch in shard.iter_batches(columns=_REFERENCE_COLUMNS):
                others = batch.filter(pc.invert(pc.is_in(batch.column("id"), value_set=own_ids)))
                writer.write_batch(others)
                kept += others.num_rows
    return out if kept else None


def prompt_hash(prompt: str) -> int:
    """A 64-bit key of a prompt's text: a million answered prompts are a set of ints, not of texts."""
    return int.from_bytes(hashlib.blake2b(prompt.strip().encode(), digest_size=8).digest(), "big")


def answered_prompts(publish: PublishConfig, base_dir: Path, cache: Path) -> set[int]:
    """`prompt_hash` of every prompt (the last user turn) the target's rows answer; empty when it holds none."""
    folder = fetch(parse_target(publish.to, base_dir), publish.revision, cache)
    answered: set[int] = set()
    for path in sorted((folder / "data" / DEFAULT).glob("*.parquet")) if folder is not None else []:
        for batch in pq.ParquetFile(path).iter_batches(columns=["messages"]):
            for turns in batch.column("messages").to_pylist():
                users = [t["content"] for t in turns if t["role"] == "user"]
                if users:
                    answered.add(prompt_hash(users[-1]))
    return answered


# what dedup reads of a reference row (curate.dedup.reference_document)
_REFERENCE_COLUMNS = ["id", "language", "messages"]


def _check_ours(folder: Path) -> None:
    card = folder / "README.md"
    if card.is_file() and MARK not in card.read_text(errors="replace"):
        raise UserError(f"publish.append: {folder} holds a dataset no dataengine publish wrote; not appending to it")


def read(folder: Path | None) -> Published:
    """The rows' index and test ids from data/default/{train,test}-*.parquet, and the card's run history."""
    if folder is None:
        return Published()
    _check_ours(folder)
    card = folder / "README.md"
    shards = {split: sorted((folder / "data" / DEFAULT).glob(f"{split}-*.parquet")) for split in ("train", "test")}
    test = read_index(shards["test"])
    return Published(
        index=pa.concat_tables([read_index(shards["train"]), test]),
        test_ids=test.column("id").combine_chunks(),
        history=_history(card),
        sizes=_sizes(card),
    )


def _history(card: Path) -> list[dict]:
    return list(DatasetCard.load(card).data.to_dict().get(HISTORY_KEY) or []) if card.is_file() else []


def _sizes(card: Path) -> dict[str, dict]:
    if not card.is_file():
        return {}
    infos = DatasetCard.load(card).data.to_dict().get("dataset_info") or []
    return {
        info.get("config_name", "default"): {
            "download_size": info.get("download_size", 0),
            "splits": {split["name"]: split.get("num_bytes", 0) for split in info.get("splits", [])},
        }
        for info in (infos if isinstance(infos, list) else [infos])
    }
