"""publish: the Hub layout written to a folder, the card, republishing, the Hub calls, and the token."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pyarrow as pa
import pytest
import yaml
from datasets import load_dataset
from huggingface_hub import DatasetCard
from rich.console import Console
from typer.testing import CliRunner

from dataengine.cli import app
from dataengine.errors import StageError, UserError
from dataengine.manifest import Manifest
from dataengine.publish.stage import pick_test_split
from dataengine.recipe import Recipe, load_recipe, parse_target
from dataengine.rows import CURATED_FEATURES, write_shards
from dataengine.runner import run_recipe
from dataengine.secrets import REMOVED, scrub

TOKEN = "hf_TestTokenThatMustNeverBeWritten0123"
RECIPE = """
name: pub
pipeline: curate
description: rows for the publish tests
teacher:
  model: builtin:smollm2-moe
  endpoint: http://alice:{token}@127.0.0.1:9/v1
  vllm:
    extra_args: ["--api-key", "{token}"]
    env: {{HF_TOKEN: "{token}"}}
generate:
  chat:
    languages: [{{code: en, quota: 4}}, {{code: fr, quota: 4}}]
curate:
  dedup: {{minhash: {{enabled: false}}}}
publish:
  to: {to}
  configs: [kind, language]
  test_fraction: 0.25
  max_rows_per_shard: 4
  license: cc-by-4.0
  tags: [unit-test]
"""


def _rows() -> list[dict]:
    rows = []
    for i in range(12):
        kind, language = ("code", "en") if i % 3 == 0 else ("chat", "en" if i % 2 else "fr")
        rows.append(
            {
                "id": f"row-{i:02d}",
                "kind": kind,
                "language": language,
                "teacher_model": "builtin:smollm2-moe",
                "teacher_revision": "build-abc",
                "run_id": "pub-run",
                "created_at": "2026-11-23T00:00:00+00:00",
                "messages": [
                    {"role": "user", "content": f"question {i}"},
                    {"role": "assistant", "content": f"answer {i}"},
                ],
            }
        )
    return rows


def _finished_run(tmp_path: Path, to: str, monkeypatch) -> tuple[Path, Path]:
    """A run folder whose curate stage is done (rows written as the curate stage writes them)."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    recipe_path = tmp_path / "pub.yaml"
    recipe_path.write_text(RECIPE.format(token="${HF_TOKEN}", to=to))
    run_dir = tmp_path / "run"
    for folder, stage, rows_in, drops in (
        ("generated", "generate", None, {}),
        ("curated", "curate", 14, {"truncated": 2}),
    ):
        write_shards(_rows(), run_dir / folder, features=CURATED_FEATURES)
        manifest = Manifest(
            stage=stage,
            config_hash="c",
            input_fingerprint="",
            output_fingerprint=f"{stage}-fp",
            rows_in=rows_in,
            rows_out=12,
            drops=drops,
            stats={},
            timings={},
            run_id="pub-run",
            recipe_hash="r",
            versions={},
        )
        manifest.write(run_dir / folder)
    return recipe_path, run_dir


def _publish(recipe_path: Path, run_dir: Path) -> tuple[Manifest, str]:
    console = Console(record=True, width=200)
    manifests = run_recipe(
        load_recipe(recipe_path),
        recipe_path.parent,
        run_dir=run_dir,
        only=["publish"],
        force=["publish"],
        console=console,
    )
    return manifests["publish"], console.export_text()


def test_published_folder_loads_per_config_and_split_and_the_card_carries_provenance(tmp_path, monkeypatch):
    recipe_path, run_dir = _finished_run(tmp_path, "file://out/dataset", monkeypatch)
    manifest, shown = _publish(recipe_path, run_dir)
    out = tmp_path / "out" / "dataset"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "data"]  # nothing but the Hub layout
    # 12 rows, at most 4 per shard: the default train split has three files named as the Hub expects
    assert sorted(p.name for p in (out / "data" / "default").iterdir()) == [
        "test-00000-of-00001.parquet",
        "train-00000-of-00003.parquet",
        "train-00001-of-00003.parquet",
        "train-00002-of-00003.parquet",
    ]

    everything = load_dataset(str(out))
    assert everything["train"].num_rows + everything["test"].num_rows == 12 == manifest.rows_out
    assert everything["test"].num_rows == 3
    assert not set(everything["train"]["id"]) & set(everything["test"]["id"])
    expected = {"code": 4, "chat": 8, "en": 8, "fr": 4}
    for config, n in expected.items():
        ds = load_dataset(str(out), config)
        assert ds["train"].num_rows + ds.get("test", []).__len__() == n, config
        assert manifest.stats["counts"][config] == {s: d.num_rows for s, d in ds.items()}
    assert set(load_dataset(str(out), "code", split="train")["kind"]) == {"code"}

    card = DatasetCard.load(out / "README.md")
    assert {c["config_name"] for c in card.data.configs} == {"default", *expected}
    assert card.data.language == ["en", "fr"] and card.data.license == "cc-by-4.0"
    assert card.data.size_categories == ["n<1K"] and "unit-test" in card.data.tags
    for fact in (
        "builtin:smollm2-moe",
        "build-abc",
        "4 experts, top-2",
        '"temperature": 0.7',
        "| curate | 14 | 12 |",
        "| truncated | 2 |",
        "minhash",
        "decontamination",
        "## Recipe (secrets removed)",
        "load_dataset(",
    ):
        assert fact in card.text, fact
    assert "published" in shown and "default" in shown


def test_publishing_the_same_content_twice_changes_nothing(tmp_path, monkeypatch):
    recipe_path, run_dir = _finished_run(tmp_path, str(tmp_path / "out"), monkeypatch)
    first, _ = _publish(recipe_path, run_dir)
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*") if p.is_file()}
    second, shown = _publish(recipe_path, run_dir)
    assert first.stats["changed"] and not second.stats["changed"]
    assert "unchanged" in shown
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*") if p.is_file()} == files


def test_the_token_never_reaches_a_file_or_the_output(tmp_path, monkeypatch, capsys):
    recipe_path, run_dir = _finished_run(tmp_path, "out", monkeypatch)
    _, shown = _publish(recipe_path, run_dir)
    result = CliRunner().invoke(app, ["publish", str(run_dir), "--to", str(tmp_path / "again")])
    assert result.exit_code == 0, result.output
    card = (tmp_path / "out" / "README.md").read_text()
    assert REMOVED in card and "alice" not in card  # the URL's credentials, the flag's value, the env entry
    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and p != recipe_path and TOKEN.encode() in p.read_bytes()]
    assert leaks == []
    assert TOKEN not in shown + result.output + capsys.readouterr().out


def test_scrub_removes_secret_keys_flags_url_credentials_and_known_values():
    value = {
        "api_key": "k",
        "max_tokens": 5,
        "nested": {"HF_TOKEN": "t", "keep": "x"},
        "args": ["--api-key", "v", "--token=w", "-x"],
        "url": "https://u:p@host:8000/v1",
        "note": "has s3cr3t inside",
    }
    assert scrub(value, ("s3cr3t",)) == {
        "api_key": REMOVED,
        "max_tokens": 5,
        "nested": {"HF_TOKEN": REMOVED, "keep": "x"},
        "args": ["--api-key", REMOVED, f"--token={REMOVED}", "-x"],
        "url": f"https://{REMOVED}@host:8000/v1",
        "note": f"has {REMOVED} inside",
    }


class FakeHub:
    """Records the calls huggingface_hub's HfApi would send; the live Hub cannot be reached from here."""

    calls: list = []
    sha = "commit-0"

    def __init__(self, *args, **kwargs):
        assert not args and not kwargs  # the token is left to huggingface_hub (HF_TOKEN / login)

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))

    def create_branch(self, repo_id, **kw):
        self.calls.append(("create_branch", repo_id, kw))

    def repo_info(self, repo_id, **kw):
        return type("Info", (), {"sha": FakeHub.sha})

    def upload_folder(self, **kw):
        files = sorted(str(p.relative_to(kw["folder_path"])) for p in Path(kw["folder_path"]).rglob("*") if p.is_file())
        self.calls.append(("upload_folder", kw["repo_id"], {**kw, "files": files}))
        FakeHub.sha = "commit-1"
        return type("CommitInfo", (), {"oid": FakeHub.sha, "commit_url": f"https://hub/{kw['repo_id']}/commit/1"})


def test_hub_target_creates_the_repo_and_uploads_card_and_shards_in_one_commit(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    FakeHub.calls = []
    recipe_path, run_dir = _finished_run(tmp_path, "hf://datasets/acme/moe-sft", monkeypatch)
    text = recipe_path.read_text().replace("  license:", "  revision: v1\n  license:")
    recipe_path.write_text(text)
    manifest, shown = _publish(recipe_path, run_dir)
    names = [c[0] for c in FakeHub.calls]
    assert names == ["create_repo", "create_branch", "upload_folder"]
    create, branch, upload = (c[2] for c in FakeHub.calls)
    assert create == {"repo_type": "dataset", "private": True, "exist_ok": True}
    assert branch["branch"] == "v1" and branch["repo_type"] == "dataset"
    assert upload["repo_id"] == "acme/moe-sft" and upload["revision"] == "v1" and upload["repo_type"] == "dataset"
    assert upload["allow_patterns"] == ["README.md", "data/**"] and upload["delete_patterns"] == ["data/**"]
    # the folder handed over also holds the stage manifest; allow_patterns keeps it off the Hub
    assert "README.md" in upload["files"] and "data/default/test-00000-of-00001.parquet" in upload["files"]
    assert manifest.stats["commit"] == "https://hub/acme/moe-sft/commit/1" and manifest.stats["changed"]
    card = DatasetCard.load(run_dir / "published" / "README.md")
    assert 'load_dataset("acme/moe-sft")' in card.text
    assert TOKEN not in json.dumps(FakeHub.calls, default=str) + shown


def test_an_appending_hub_publish_deletes_nothing_the_repo_holds(tmp_path, monkeypatch):
    import huggingface_hub

    from dataengine.target.send import to_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    FakeHub.calls = []
    layout = tmp_path / "layout"
    (layout / "data" / "default").mkdir(parents=True)
    (layout / "README.md").write_text("card")
    (layout / "data" / "default" / "train-run2-00000-of-00001.parquet").write_bytes(b"rows")
    to_hub(layout, "acme/moe-sft", True, None, "append", append=True)
    upload = FakeHub.calls[-1][2]
    assert upload["delete_patterns"] == [] and upload["files"] == [
        "README.md",
        "data/default/train-run2-00000-of-00001.parquet",
    ]


def test_hub_errors_are_reported_with_the_repo_and_no_traceback(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError

    class Refusing(FakeHub):
        def create_repo(self, repo_id, **kw):
            request = httpx.Request("POST", "https://huggingface.co/api/repos/create")
            response = httpx.Response(403, request=request)
            raise HfHubHTTPError("403 Forbidden: you cannot write to acme", response=response)

    monkeypatch.setattr(huggingface_hub, "HfApi", Refusing)
    recipe_path, run_dir = _finished_run(tmp_path, "hf://datasets/acme/moe-sft", monkeypatch)
    with pytest.raises(UserError, match=r"hf://datasets/acme/moe-sft failed: 403 Forbidden"):
        _publish(recipe_path, run_dir)


def test_dry_run_writes_the_layout_but_sends_nothing(tmp_path, monkeypatch):
    recipe_path, run_dir = _finished_run(tmp_path, "out", monkeypatch)
    _publish(recipe_path, run_dir)  # the run as `dataengine run` leaves it
    result = CliRunner().invoke(app, ["publish", str(run_dir), "--to", str(tmp_path / "dest"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "dry run: would send" in result.output and not (tmp_path / "dest").exists()


@pytest.mark.parametrize(
    ("to", "message"),
    [("hf://models/acme/x", "hf://datasets/ORG/NAME"), ("s3://bucket/x", "unknown scheme")],
)
def test_bad_targets_are_refused_at_validation(tmp_path, monkeypatch, to, message):
    recipe_path, _ = _finished_run(tmp_path, "out", monkeypatch)
    recipe_path.write_text(recipe_path.read_text().replace("to: out", f"to: {to}"))
    with pytest.raises(UserError, match=message):
        load_recipe(recipe_path)


def test_parse_target_resolves_folders_against_the_recipe_folder(tmp_path):
    assert str(parse_target("file://rel/x", tmp_path)) == f"file://{tmp_path / 'rel' / 'x'}"
    assert str(parse_target("hf://datasets/a/b", tmp_path)) == "hf://datasets/a/b"


def test_a_run_that_kept_no_rows_is_refused(tmp_path, monkeypatch):
    recipe_path, run_dir = _finished_run(tmp_path, "out", monkeypatch)
    write_shards([], run_dir / "curated", features=CURATED_FEATURES)
    with pytest.raises(StageError, match="nothing to publish: 0 rows were kept"):
        _publish(recipe_path, run_dir)
    assert not (tmp_path / "out").exists()


def test_every_config_shares_one_test_split(tmp_path, monkeypatch):
    recipe_path, run_dir = _finished_run(tmp_path, "out", monkeypatch)
    _publish(recipe_path, run_dir)
    test_ids = set(load_dataset(str(tmp_path / "out"), split="test")["id"])
    for config in ("chat", "code", "en", "fr"):
        ds = load_dataset(str(tmp_path / "out"), config)
        assert set(ds["train"]["id"]).isdisjoint(test_ids)
        assert set(ds["test"]["id"] if "test" in ds else []) <= test_ids


def test_the_test_split_is_the_students_held_out_rows(tmp_path):
    recipe = Recipe.model_validate(
        yaml.safe_load(RECIPE.format(token="t", to="out").replace("  test_fraction: 0.25\n", ""))
        | {"train": {"student": {"name": "s", "model": "some/model"}}}
    )
    run_dir = tmp_path / "run"
    (run_dir / "students" / "s").mkdir(parents=True)
    training = {"student": {}, "train_rows": 10, "held_out_ids": ["row-05", "row-07"], "phases": []}
    (run_dir / "students" / "s" / "training.json").write_text(json.dumps(training))
    student = run_dir / "students" / "s"  # what the pipeline wires as the publish stage's `student` input
    ids = pa.array([r["id"] for r in _rows()])
    test_ids, held_out = pick_test_split(recipe, recipe.publish, student, ids)
    assert (test_ids.to_pylist(), held_out) == (["row-05", "row-07"], True)
    (run_dir / "students" / "s" / "training.json").unlink()  # no student trained: the id hash decides
    ids, held_out = pick_test_split(recipe, recipe.publish, student, ids)
    assert not held_out and len(ids) == 3  # train.evaluate.eval_fraction 0.2 of 12 rows, rounded up


def test_a_folder_target_never_replaces_what_it_did_not_write(tmp_path, monkeypatch):
    recipe_path, run_dir = _finished_run(tmp_path, "out", monkeypatch)
    _publish(recipe_path, run_dir)  # a run folder as `dataengine run` leaves it
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("# my project\n")
    runner = CliRunner()
    refused = runner.invoke(app, ["publish", str(run_dir), "--to", str(project)])
    # CliRunner calls the app without main(), which prints a UserError in one line and exits 2
    assert isinstance(refused.exception, UserError)
    assert "non-empty folder that no earlier publish wrote" in str(refused.exception)
    assert (project / "README.md").read_text() == "# my project\n"
    (tmp_path / "afile").write_text("x")
    to_file = runner.invoke(app, ["publish", str(run_dir), "--to", str(tmp_path / "afile")])
    assert "is a file, not a folder" in str(to_file.exception)
    unknown = runner.invoke(app, ["publish", str(run_dir), "--to", "s3://bucket/x"])
    assert "use hf://datasets/ORG/NAME" in str(unknown.exception)
    again = runner.invoke(app, ["publish", str(run_dir), "--to", str(tmp_path / "out")])  # ours: replaced in place
    assert again.exit_code == 0 and "unchanged" in again.output


def test_scrub_catches_secret_env_names_query_tokens_and_urls_inside_flags():
    value = {
        "env": {"AWS_SECRET_ACCESS_KEY": "a", "PGPASSWORD": "b", "NUM_THREADS": "4"},
        "endpoint": "http://h/v1?token=abc&x=1",
        "args": ["--endpoint=https://u:p@h:80/x", "--hf-token", "z"],
        "note": "see https://u:p@host/v1 now",
    }
    assert scrub(value) == {
        "env": {"AWS_SECRET_ACCESS_KEY": REMOVED, "PGPASSWORD": REMOVED, "NUM_THREADS": "4"},
        "endpoint": f"http://h/v1?token={REMOVED}&x=1",
        "args": [f"--endpoint=https://{REMOVED}@h:80/x", "--hf-token", REMOVED],
        "note": f"see https://{REMOVED}@host/v1 now",
    }


def test_a_secret_from_a_secret_named_variable_is_removed_from_any_field(tmp_path, monkeypatch):
    """`${TEACHER_API_KEY}` in a field with an innocent name (the description) is still a secret."""
    secret = "sk-live-InnocentFieldSecret42"
    monkeypatch.setenv("TEACHER_API_KEY", secret)
    recipe_path, run_dir = _finished_run(tmp_path, "out", monkeypatch)
    recipe_path.write_text(recipe_path.read_text().replace("rows for the publish tests", "for ${TEACHER_API_KEY}"))
    _, shown = _publish(recipe_path, run_dir)
    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and p != recipe_path and secret.encode() in p.read_bytes()]
    assert leaks == [] and secret not in shown
    assert f"for {REMOVED}" in (tmp_path / "out" / "README.md").read_text()
