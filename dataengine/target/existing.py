"""What a target already holds, for appending runs (`publish.append`, on in incremental scheduled runs).

Curation dedups new rows against the target's `data/default` rows, and publishing keeps those rows (in the
split they were published in) and adds only rows with new ids. The card's front matter carries the run
history, so each publish extends the history it finds there, wherever the earlier runs happened.
"""

from __future__ import annotations

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


@dataclass
class Published:
    """The target's rows per split and its card's run history (all empty for a new target)."""

    rows: list[dict] = field(default_factory=list)
    test_ids: set[str] = field(default_factory=set)
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


def reference_folder(publish: PublishConfig, base_dir: Path, work: Path, own_ids: set[str], cache: Path) -> Path | None:
    """The target's `default` rows as a dedup reference folder (in `work`), when appending to a target that
    has rows (a Hub target fetched into `cache`). Rows of this run (`own_ids`, its generated ids) are left out:
    curating again after this run published must not drop its rows as copies of themselves."""
    folder = fetch(parse_target(publish.to, base_dir), publish.revision, cache)
    if folder is None:
        return None
    _check_ours(folder)
    files = sorted((folder / "data" / DEFAULT).glob("*.parquet"))
    table = pa.concat_tables([pq.read_table(path) for path in files], promote_options="default") if files else None
    if table is None or table.num_rows == 0:
        return None
    others = table.filter(pc.invert(pc.is_in(table["id"], value_set=pa.array(sorted(own_ids), pa.string()))))
    if others.num_rows == 0:
        return None
    out = work / "reference"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    pq.write_table(others, out / "rows.parquet")
    return out


def _check_ours(folder: Path) -> None:
    card = folder / "README.md"
    if card.is_file() and MARK not in card.read_text(errors="replace"):
        raise UserError(f"publish.append: {folder} holds a dataset no dataengine publish wrote; not appending to it")


def read(folder: Path | None) -> Published:
    """Rows and test ids from data/default/{train,test}-*.parquet, and the card's run history."""
    if folder is None:
        return Published()
    _check_ours(folder)
    card = folder / "README.md"
    out = Published(history=_history(card), sizes=_sizes(card))
    for split in ("train", "test"):
        for path in sorted((folder / "data" / DEFAULT).glob(f"{split}-*.parquet")):
            rows = pq.read_table(path).to_pylist()
            out.rows += rows
            if split == "test":
                out.test_ids |= {row["id"] for row in rows}
    return out


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
