"""Where a published dataset goes: a Hub dataset repository (one commit) or a local folder (the same files).

Only `README.md` and `data/**` are published; anything else in the layout folder (the stage manifest)
stays in the run. The Hub token comes from huggingface_hub itself (`HF_TOKEN` or `hf auth login`) and is
only ever handed to huggingface_hub: it is never part of a path, a message or a record written here.
"""

from __future__ import annotations

import filecmp
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import httpx

from dataengine.errors import UserError

PUBLISHED = ("README.md", "data/**")
MARK = "dataengine_card: true"  # in every card we write: a folder holding it was written by a publish
DEFAULT = "default"  # the config holding every row: data/default/


def check_destination(destination: Path) -> None:
    """Only an empty folder or one an earlier publish wrote (its card is ours) may be replaced: publishing to
    `.` must never delete a project's README.md and data/."""
    if destination.exists() and not destination.is_dir():
        raise UserError(f"publish target {destination} is a file, not a folder")
    if not destination.is_dir() or not any(destination.iterdir()):
        return
    card = destination / "README.md"
    ours = card.is_file() and MARK in card.read_text(errors="replace")
    if not ours:
        raise UserError(
            f"publish target {destination} is a non-empty folder that no earlier publish wrote; "
            "give an empty or new folder"
        )


def published_files(layout: Path) -> list[Path]:
    return sorted([layout / "README.md", *(p for p in (layout / "data").rglob("*") if p.is_file())])


@dataclass
class Outcome:
    target: str
    changed: bool
    files: int
    commit: str | None = None  # Hub commit URL


def _same_tree(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    return files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) and all(
        filecmp.cmp(a / f, b / f, shallow=False) for f in files
    )


def to_folder(layout: Path, destination: Path, append: bool = False) -> Outcome:
    """Replace the folder's README.md and data/ with the layout's; untouched when identical (a no-op). With
    `append`, the layout's shards are added beside the folder's (each written whole: aside, then renamed),
    none of those is touched, and the card is replaced last."""
    check_destination(destination)
    if append:
        return _add_to_folder(layout, destination)
    files = published_files(layout)
    card, data = destination / "README.md", destination / "data"
    same_card = card.is_file() and filecmp.cmp(layout / "README.md", card, shallow=False)
    if same_card and data.is_dir() and _same_tree(layout / "data", data):
        return Outcome(f"file://{destination}", changed=False, files=len(files))
    destination.mkdir(parents=True, exist_ok=True)
    staging = destination / ".data.publishing"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(layout / "data", staging)
    shutil.rmtree(destination / "data", ignore_errors=True)
    staging.rename(destination / "data")
    shutil.copy2(layout / "README.md", destination / "README.md")
    return Outcome(f"file://{destination}", changed=True, files=len(files))


def _add_to_folder(layout: Path, destination: Path) -> Outcome:
    files = published_files(layout)
    changed = False
    for path in files:
        there = destination / path.relative_to(layout)
        if there.is_file() and filecmp.cmp(path, there, shallow=False):
            continue
        changed = True
        there.parent.mkdir(parents=True, exist_ok=True)
        aside = there.with_name(there.name + ".publishing")
        shutil.copy2(path, aside)
        os.replace(aside, there)
    return Outcome(f"file://{destination}", changed=changed, files=len(files))


def to_hub(
    layout: Path, repo_id: str, private: bool, revision: str | None, message: str, append: bool = False
) -> Outcome:
    """One commit with the card and every shard. huggingface_hub skips files the Hub already has and makes
    no commit when nothing changed; `delete_patterns` removes shards an earlier publish left behind, except
    when appending: then the layout holds only the run's new shards and the card, and the rest stays."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, repo_type="dataset", branch=revision, exist_ok=True)
        head = _head(api, repo_id, revision)
        info = api.upload_folder(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=str(layout),
            revision=revision,
            commit_message=message,
            allow_patterns=list(PUBLISHED),
            delete_patterns=[] if append else ["data/**"],
        )
    except HfHubHTTPError as exc:
        # the message names the repo and the HTTP status; the token is in neither
        raise UserError(f"publishing to hf://datasets/{repo_id} failed: {exc}") from None
    except (httpx.HTTPError, OSError) as exc:
        raise UserError(f"publishing to hf://datasets/{repo_id} failed: cannot reach the Hub ({exc})") from None
    return Outcome(
        f"hf://datasets/{repo_id}", changed=info.oid != head, files=len(published_files(layout)), commit=info.commit_url
    )


def _head(api, repo_id: str, revision: str | None) -> str | None:
    return api.repo_info(repo_id, repo_type="dataset", revision=revision).sha
