"""Curation end to end on the builtin teacher's real output (vLLM CPU server)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from datasets import load_dataset
from rich.console import Console

from dataengine.experts.metrics import js_divergence
from dataengine.recipe import PublishConfig, load_recipe
from dataengine.rows import read_rows
from dataengine.runner import run_recipe
from dataengine.verdicts import verdict_schema
from tests.conftest import SHORT, tiny_recipe

pytestmark = pytest.mark.slow

CURATE = """
pipeline: curate
curate:
  filters:
    truncated: {enabled: false}   # the tiny run caps answers at 40 tokens: keep some rows to dedup
    length: {min_chars: 8}
  dedup:
    minhash: {num_buckets: 4, hashes_per_bucket: 4}
  code: {timeout_s: 5, cpu_s: 3}
"""


def curate_run(tmp_path: Path, endpoint: str, extra: str = ""):
    path = tiny_recipe(tmp_path, endpoint=endpoint, extra=CURATE + extra)
    recipe = load_recipe(path)
    console = Console(record=True, width=200)
    manifests = run_recipe(recipe, tmp_path, run_dir=tmp_path / "run", console=console)
    return recipe, manifests, console.export_text()


def test_curate_accounts_for_every_row_and_skips_on_rerun(tmp_path, teacher_server):
    recipe, manifests, shown = curate_run(tmp_path, teacher_server.base_url, extra="route: {}\n")
    run_dir = tmp_path / "run"
    generated, curated = manifests["generate"], manifests["curate"]
    # read_rows, not load_dataset: a sampled teacher may leave one side empty, and datasets refuses an empty shard
    kept, rejected = read_rows(run_dir / "curated"), read_rows(run_dir / "rejected")

    assert curated.rows_in == generated.rows_out == len(kept) + len(rejected)
    assert sum(curated.drops.values()) == len(rejected)
    assert all(r["drop_reason"] and r["drop_step"] for r in rejected)
    assert all(r["drop_reason"] is None for r in kept)
    assert not {r["id"] for r in kept} & {r["id"] for r in rejected}
    for row in kept:
        if row["kind"] == "chat":
            assert row["language_detected"] == row["language"].split("-")[0]
        else:
            assert row["tests_passed"] is True
        assert row["dedup_cluster_size"] >= 1
    for row in rejected:
        if row["drop_reason"] in ("code_tests_failed", "code_tests_timeout"):
            assert row["tests_passed"] is False and row["test_output"]
    quota = curated.stats["quota"]
    assert set(quota) == {"chat/en", "chat/fr", "chat/zh", "code/en"}
    assert sum(q["kept"] for q in quota.values()) == len(kept)
    assert "curated: kept" in shown and "target" in shown
    _routed_like_the_teacher_routes(manifests["route"], run_dir, len(kept), len(rejected))
    assert "expert load of" in shown

    console = Console(record=True, width=200)
    again = run_recipe(recipe, tmp_path, run_dir=run_dir, console=console)
    assert console.export_text().count("already done") == 3
    assert again["curate"].output_fingerprint == curated.output_fingerprint


def _routed_like_the_teacher_routes(route, run_dir: Path, kept: int, rejected: int) -> None:
    """Every kept and rejected row routed through the builtin teacher's 30 MoE layers, and its k-means
    router sends code and chat to measurably different experts."""
    rows = load_dataset(str(run_dir / "routing"), split="train")
    assert route.rows_in == kept + rejected == route.rows_out + sum(route.drops.values())
    assert sum(rows["kept"]) == kept and route.stats["layers"] == 30
    routing_map = json.loads((run_dir / "routing" / "map.json").read_text())
    assert routing_map["overall"]["rows"] == kept and len(routing_map["overall"]["load"]) == 30

    def counts(kind: str) -> np.ndarray:
        return np.sum([r["routing_signature"] for r in rows if r["kind"] == kind], axis=0)

    # JS divergence between code's and chat's expert load, per layer. Measured on the quickstart's 40 rows
    # (7,870 answer tokens): at most 0.24 (mean 0.14) with the k-means router, at most 0.06 (mean 0.02) with
    # a random one. 0.1 sits between the two
    assert max(js_divergence(counts("code"), counts("chat"))) > 0.1


def test_curate_resumes_after_a_crash_between_steps(tmp_path, teacher_server):
    """A crash after the filter step: the manifest is missing, the filter step's tasks are complete.
    The rerun skips the finished datatrove tasks and ends with the same rows."""
    recipe, manifests, _ = curate_run(tmp_path, teacher_server.base_url)
    run_dir, work = tmp_path / "run", tmp_path / "run" / ".work" / "curate"

    def outcome() -> dict[str, list[tuple[str, str | None]]]:
        # kept and rejected rows with their reasons (read_rows: a sampled teacher may leave one side empty, and
        # datasets refuses an empty shard)
        sides = ("curated", "rejected")
        return {side: sorted((r["id"], r.get("drop_reason")) for r in read_rows(run_dir / side)) for side in sides}

    before = outcome()
    assert sum(map(len, before.values())) == manifests["curate"].rows_in > 0
    filter_stats = work / "logs" / "filter" / "stats.json"
    stamp = filter_stats.stat().st_mtime_ns

    (run_dir / "curated" / "manifest.json").unlink()  # the stage never finished
    for step in (work / "logs").iterdir():  # ... and crashed before any dedup step completed
        if step.name != "filter":
            for marker in (step / "completions").glob("*"):
                marker.unlink()

    console = Console(record=True, width=200)
    resumed = run_recipe(recipe, tmp_path, run_dir=run_dir, console=console)
    assert filter_stats.stat().st_mtime_ns == stamp  # the filter step was not run again
    assert outcome() == before
    assert resumed["curate"].rows_out == manifests["curate"].rows_out
    assert json.loads((run_dir / "curated" / "manifest.json").read_text())["rows_in"] == manifests["curate"].rows_in


def test_top_up_round_when_curation_falls_short(tmp_path, teacher_server):
    """Everything is dropped (an impossible length floor), so one bounded top-up round asks for more
    prompts in every group; the first round is not generated again, and a rerun adds no round."""
    curate = CURATE.replace("length: {min_chars: 8}", "length: {min_chars: 100000}")
    # every rollout of a round in one wave, each short: the test counts rows, whatever they say
    path = tiny_recipe(tmp_path, endpoint=teacher_server.base_url, extra=curate, concurrency=32, **SHORT)
    top_up = "  records_per_chunk: 4\n  top_up: {rounds: 1, max_factor: 1.5}\n"
    path.write_text(path.read_text().replace("  records_per_chunk: 4\n", top_up))
    recipe = load_recipe(path)
    run_dir = tmp_path / "run"
    console = Console(record=True, width=200)
    manifests = run_recipe(recipe, tmp_path, run_dir=run_dir, console=console)
    shown = console.export_text()

    rounds = json.loads((run_dir / "top_up.json").read_text())["rounds"]
    assert len(rounds) == 1 and "top-up" in shown
    # 2 chat prompts x 2 rollouts = 4 rows short per language, keep rate floor 1/1.5 -> 6 rows -> 3 prompts
    assert rounds[0] == {"chat/en": 3, "chat/fr": 3, "chat/zh": 3, "code/en": 3}
    generated = manifests["generate"]
    assert generated.stats["top_up_rounds"] == 1
    assert generated.rows_in == (2 * 3 * 2 + 2) + (3 * 3 * 2 + 3)
    ds = load_dataset(str(run_dir / "generated"), split="train")
    assert len(set(ds["id"])) == len(ds) == generated.rows_out
    work = run_dir / ".work" / "generate"
    assert (work / "top-up-1" / "raw").is_dir()
    base_stats = (work / "logs" / "stats.json").stat().st_mtime_ns

    console = Console(record=True, width=200)
    run_recipe(recipe, tmp_path, run_dir=run_dir, console=console)
    assert console.export_text().count("already done") == 2 and "top-up" not in console.export_text()
    assert (work / "logs" / "stats.json").stat().st_mtime_ns == base_stats
    assert len(json.loads((run_dir / "top_up.json").read_text())["rounds"]) == 1


JUDGED = """
pipeline: curate
curate:
  filters:
    truncated: {enabled: false}
    language: {enabled: false}
    question: {enabled: false}
    length: {min_chars: 8}
  code: {timeout_s: 5, cpu_s: 3}
  judge: {threshold: 1.5, rationale_chars: 80, pairs: {min_margin: 0.25}}
"""


def test_a_server_of_ours_writes_no_newlines_outside_json_strings(teacher_server):
    """Asked for blank lines, the builtin teacher writes them between a verdict's keys and values, and may go on
    until max_tokens (a row's every attempt did in a CI run: judge_error). Our servers allow none outside strings
    (teacher/server.py, STRUCTURED_OUTPUTS)."""
    import httpx

    schema = verdict_schema(["helpfulness", "correctness"], 40)
    asked = "Write a JSON object, pretty-printed with two blank lines after every colon and every comma."
    payload = {
        "model": "builtin:smollm2-moe",
        "messages": [{"role": "user", "content": asked}],
        "max_tokens": 96,
        "temperature": 0,
        "response_format": {"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema}},
    }
    answer = httpx.post(f"{teacher_server.base_url}/v1/chat/completions", json=payload, timeout=300).json()
    text = answer["choices"][0]["message"]["content"]
    assert answer["choices"][0]["finish_reason"] == "stop", text
    json.loads(text)
    # outside its strings: no newline, no indentation (xgrammar 0.2.8 may put one space after a comma)
    assert not re.search(r"\s\s|\n", re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)), text


def test_the_teacher_judges_every_kept_row_under_its_schema(tmp_path, teacher_server):
    path = tiny_recipe(tmp_path, endpoint=teacher_server.base_url, extra=JUDGED)
    recipe = load_recipe(path)
    console = Console(record=True, width=200)
    manifests = run_recipe(recipe, tmp_path, run_dir=tmp_path / "run", console=console)
    curated, judged = manifests["curate"], manifests["judge"]
    assert judged.rows_in == curated.rows_out > 0
    assert judged.rows_out + sum(judged.drops.values()) == judged.rows_in
    # the JSON schema, with no newlines outside its strings (teacher/server.py), holds the 135M teacher to a
    # verdict that reads: none is rejected as unreadable
    assert "judge_error" not in judged.drops
    run_dir = tmp_path / "run"
    # the 135M teacher is a harsh and noisy judge: either side may be empty (the stand-in judge of test_judge.py
    # routes rows to both)
    kept, rejected = read_rows(run_dir / "judged"), read_rows(run_dir / "judge_rejected")
    assert all(r["judge_score"] >= 1.5 for r in kept) and all(r["judge_score"] < 1.5 for r in rejected)
    assert {r["drop_reason"] for r in rejected} <= {"judge_low"}
    for row in kept + rejected:
        scores = row["judge_scores"]
        asked = ["helpfulness", "correctness", "instruction_following"]
        asked.append("tests_meaningful" if row["kind"] == "code" else "language")
        assert all(scores[name] in (1, 2, 3, 4, 5) for name in asked), scores
        assert row["judge_score"] == pytest.approx(sum(scores[n] for n in asked) / 4, abs=1e-3)
        assert len(row["judge_rationale"]) <= 80 and row["judge_model"] == recipe.teacher.model
    assert judged.stats["verdict_tokens"] > 0 and judged.stats["judge_tokens_per_second"] > 0
    histogram = judged.stats["score_histogram"]
    assert sum(histogram["kept"].values()) == len(kept) and sum(histogram["rejected"].values()) == len(rejected)
    page = (run_dir / "report.html").read_text()
    assert 'id="judge" data-drawn="true"' in page
    # a pair for every prompt whose best rollout was kept and beat its worst by the margin (the tiny recipe
    # answers each question twice)
    by_prompt = {}
    for row in kept + rejected:
        by_prompt.setdefault(json.dumps(row["messages"][:-1]), []).append(row["judge_score"])
    expected = sum(max(s) >= 1.5 and max(s) - min(s) >= 0.25 for s in by_prompt.values() if len(s) > 1)
    pairs = read_rows(run_dir / "preference")
    assert len(pairs) == expected == judged.stats["preference_pairs"]
    for pair in pairs:
        assert pair["chosen_score"] - pair["rejected_score"] >= 0.25 and pair["chosen"][0]["role"] == "assistant"
    if kept and pairs:  # the published folder's preference config loads by name
        run_recipe(
            recipe.model_copy(update={"publish": PublishConfig(to=str(tmp_path / "out"))}),
            tmp_path,
            run_dir=run_dir,
            console=console,
        )
        loaded = load_dataset(str(tmp_path / "out"), "preference")  # train, and test where a test row asks
        assert sum(split.num_rows for split in loaded.values()) == len(pairs)
        assert set(loaded["train" if "train" in loaded else "test"].column_names) >= {"prompt", "chosen", "rejected"}
