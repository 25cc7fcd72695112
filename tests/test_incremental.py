"""Incremental runs: each run dedups against what is already published and appends only new rows.

The curate and publish stages run for real (datatrove dedup, parquet, the card) on generated rows written
here, so no teacher is needed; `scheduled_recipe` is what turns a scheduled run into an appending one.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pyarrow as pa
import pytest
from datasets import load_dataset
from huggingface_hub import DatasetCard
from rich.console import Console

from dataengine.errors import RecipeError, UserError
from dataengine.manifest import Manifest
from dataengine.recipe import load_recipe
from dataengine.rows import SAMPLE_FEATURES, write_shards
from dataengine.runner import run_recipe
from dataengine.schedule.scheduled_run import scheduled_recipe
from dataengine.target import existing
from tests.conftest import FILTERS_OFF
from tests.planted_corpus import SYLLABLES

RECIPE = """
name: inc
pipeline: curate
teacher: {model: "builtin:smollm2-moe"}
generate:
  chat: {languages: [{code: en, quota: 8}]}
curate:
  filters: FILTERS_OFF
  code: {enabled: false}
  decontamination: {enabled: false}
publish:
  to: published
  configs: [language]
  test_fraction: 0.3
schedule: {cron: "0 3 * * *"}
""".replace("FILTERS_OFF", FILTERS_OFF)


def _answers(n: int, seed: int) -> list[str]:
    """Distinct answers that differ in words (dedup normalises digits away)."""
    rng = random.Random(seed)
    vocab = sorted({"".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))) for _ in range(3000)})
    return [" ".join(rng.choice(vocab) for _ in range(80)) for _ in range(n)]


def _row(row_id: str, answer: str, seed: int) -> dict:
    return {
        "id": row_id,
        "kind": "chat",
        "language": "en",
        "seed": seed,
        "teacher_model": "builtin:smollm2-moe",
        "messages": [{"role": "user", "content": "Tell me something."}, {"role": "assistant", "content": answer}],
    }


def _run(
    recipe_path: Path, run_dir: Path, rows: list[dict] | None, run_id: str, seed: int, force: list[str] | None = None
) -> dict[str, Manifest]:
    """A scheduled run whose teacher wrote `rows` (the generate stage's output; None: keep what it wrote),
    then curate and publish for real, with the recipe as `schedule once` runs it."""
    if rows is not None:
        write_shards(rows, run_dir / "generated", features=SAMPLE_FEATURES)
        Manifest(
            stage="generate",
            config_hash="g",
            input_fingerprint="",
            output_fingerprint=run_id,
            rows_in=None,
            rows_out=len(rows),
            drops={},
            stats={},
            timings={},
            run_id=run_id,
            recipe_hash="r",
            versions={},
        ).write(run_dir / "generated")
        (run_dir / "run.json").write_text(json.dumps({"run_id": run_id, "created_at": f"2026-11-23T0{run_id[-1]}:00"}))
    recipe = scheduled_recipe(load_recipe(recipe_path), seed)
    return run_recipe(
        recipe,
        recipe_path.parent,
        run_dir=run_dir,
        only=["curate", "publish"],
        force=force,
        console=Console(width=200, quiet=True),
    )


def _published(folder: Path) -> dict[str, set[str]]:
    return {split: set(load_dataset(str(folder), split=split)["id"]) for split in ("train", "test")}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _mtimes(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_a_second_run_appends_only_rows_not_already_published(tmp_path):
    recipe_path = tmp_path / "inc.yaml"
    recipe_path.write_text(RECIPE)
    target = tmp_path / "published"
    first, fresh = _answers(6, seed=1), _answers(5, seed=2)

    one = _run(
        recipe_path, tmp_path / "run1", [_row(f"a{i}", text, 1) for i, text in enumerate(first)], "inc-run1", 101
    )
    assert one["publish"].stats["rows_added"] == one["publish"].stats["rows_total"] == 6
    before = _published(target)
    assert before["train"] | before["test"] == {f"a{i}" for i in range(6)}
    shards = {p: (p.stat().st_mtime_ns, _sha(p)) for p in (target / "data").rglob("*.parquet")}
    assert shards and all("inc-run1-" in p.name for p in shards)  # an appending publish names its shards

    # the second run's teacher repeats itself: an exact copy (new id, other case and spacing), a near copy
    # (one word changed), a new answer under an id already published, and four new answers
    words = first[1].split()
    words[10] = "zzzword"
    again = [
        _row("b-exact", "  " + first[0].upper().replace(" ", "  "), 2),
        _row("b-near", " ".join(words), 2),
        _row("a2", fresh[4], 2),
        *(_row(f"b{i}", text, 2) for i, text in enumerate(fresh[:4])),
    ]
    two = _run(recipe_path, tmp_path / "run2", again, "inc-run2", 202)

    curated = two["curate"]
    assert curated.rows_out == 5  # the new text under a2 is no copy...
    assert curated.drops == {"exact_duplicate": 1, "near_duplicate": 1}  # ...the copies matched the published rows
    assert two["publish"].stats["rows_added"] == 4 and two["publish"].stats["rows_total"] == 10  # ...a2 is taken
    # the second publish added shards of its own and left every earlier one as it was
    assert {p: (p.stat().st_mtime_ns, _sha(p)) for p in shards} == shards
    added = {p for p in (target / "data").rglob("*.parquet")} - set(shards)
    assert added and all("inc-run2-" in p.name for p in added)
    sent = {
        p.relative_to(tmp_path / "run2" / "published") for p in (tmp_path / "run2" / "published").rglob("*.parquet")
    }
    assert sent == {p.relative_to(target) for p in added}  # the run's layout held its new rows only
    after = _published(target)
    assert after["train"] | after["test"] == {f"a{i}" for i in range(6)} | {f"b{i}" for i in range(4)}
    assert before["train"] <= after["train"] and before["test"] <= after["test"]  # earlier rows keep their split
    assert len(load_dataset(str(target), "en", split="train")) == len(after["train"])
    rows = {r["id"]: r for split in ("train", "test") for r in load_dataset(str(target), split=split)}
    assert rows["a2"]["messages"][-1]["content"] == first[2]  # the published row is never replaced

    card = DatasetCard.load(target / "README.md")
    history = card.data.to_dict()[existing.HISTORY_KEY]
    assert [(h["run_id"], h["rows_added"], h["rows_total"]) for h in history] == [
        ("inc-run1", 6, 6),
        ("inc-run2", 4, 10),
    ]
    assert "| inc-run2 | 2026-11-23T02:00 | 202 | 4 | 10 |" in card.text
    assert "Rows published by earlier runs keep their split" in card.text

    # curating the second run again after it published keeps its own rows (they are no copies of
    # themselves), and publishing it again, or the first run after the second, changes nothing
    mtimes = _mtimes(target)
    recurated = _run(recipe_path, tmp_path / "run2", None, "inc-run2", 202, force=["curate", "publish"])
    assert recurated["curate"].rows_out == 5 and recurated["publish"].stats["changed"] is False
    republished = _run(recipe_path, tmp_path / "run1", None, "inc-run1", 101, force=["publish"])
    assert republished["publish"].stats["changed"] is False
    assert _mtimes(target) == mtimes


def test_appending_refuses_a_dataset_it_did_not_write(tmp_path):
    (tmp_path / "data" / "default").mkdir(parents=True)
    (tmp_path / "README.md").write_text("# someone else's dataset\n")
    with pytest.raises(UserError, match="no dataengine publish wrote"):
        existing.read(tmp_path)


def test_a_recipe_with_a_schedule_appends_whoever_starts_the_run(tmp_path):
    path = tmp_path / "inc.yaml"
    path.write_text(RECIPE)
    assert load_recipe(path).publish.append is True  # a manual `dataengine run` adds to the same dataset
    scheduled = scheduled_recipe(load_recipe(path), seed=1234)
    assert scheduled.publish.append is True and scheduled.generate.seed == 1234
    path.write_text(RECIPE.replace('"0 3 * * *"}', '"0 3 * * *", incremental: false}'))
    assert load_recipe(path).publish.append is False
    path.write_text(RECIPE.replace("schedule:", "# schedule:"))
    assert load_recipe(path).publish.append is False  # without a schedule, a publish replaces
    path.write_text(
        RECIPE.replace("test_fraction: 0.3", "test_fraction: 0.3\n  append: false").replace(
            '"0 3 * * *"}', '"0 3 * * *", incremental: true}'
        )
    )
    with pytest.raises(RecipeError, match="contradicts publish.append: false"):
        load_recipe(path)


def test_a_hub_target_is_read_through_snapshot_download_once_per_commit(tmp_path, monkeypatch):
    """The Hub path up to the network (HfApi and snapshot_download are recorders): what is downloaded, a repo
    that does not exist yet, and one copy for curation and publishing unless the target moved on between."""
    import httpx
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    from dataengine.recipe import PublishConfig, parse_target

    calls, heads = [], {"org/old": "c1"}

    class Api:
        def dataset_info(self, repo_id, revision=None):
            if repo_id not in heads:
                response = httpx.Response(
                    404, request=httpx.Request("GET", f"https://huggingface.co/api/datasets/{repo_id}")
                )
                raise RepositoryNotFoundError("404 Client Error: Repository Not Found", response=response)
            return type("Info", (), {"sha": heads[repo_id]})

    def snapshot_download(repo_id, **kw):
        calls.append((repo_id, kw))
        (Path(kw["local_dir"]) / "data" / "default").mkdir(parents=True)
        write_shards(
            [_row("old", "an answer published earlier", 1)], Path(kw["local_dir"]) / "tmp", features=SAMPLE_FEATURES
        )
        for shard in (Path(kw["local_dir"]) / "tmp" / "data").glob("*.parquet"):
            shard.rename(Path(kw["local_dir"]) / "data" / "default" / "train-00000-of-00001.parquet")
        return kw["local_dir"]

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    cache = tmp_path / "run" / ".work" / "target"
    assert existing.fetch(parse_target("hf://datasets/org/new", tmp_path), None, cache) is None
    assert not calls  # nothing to download from a repo that does not exist
    # curation reads the target for its dedup reference, then publishing reads it again: one download
    publish = PublishConfig(to="hf://datasets/org/old", revision="nightly")
    reference = existing.reference_folder(publish, tmp_path, tmp_path / "curate-work", pa.array(["mine"]), cache)
    assert (
        reference is not None
        and existing.read(existing.fetch(parse_target(publish.to, tmp_path), "nightly", cache)).index.num_rows == 1
    )
    assert calls == [
        (
            "org/old",
            {
                "repo_type": "dataset",
                "revision": "c1",
                "local_dir": str(cache),
                "allow_patterns": ["README.md", "data/default/*"],
            },
        )
    ]
    heads["org/old"] = "c2"  # another run appended in between: the copy is stale, fetched again
    existing.fetch(parse_target(publish.to, tmp_path), "nightly", cache)
    assert [c[1]["revision"] for c in calls] == ["c1", "c2"]
