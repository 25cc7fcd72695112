"""The run report: what it gathers from a run folder, the terminal version, and the page in headless Chromium."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from dataengine import numbers
from dataengine.cli import app
from dataengine.experts.maps import RoutedRow
from dataengine.experts.maps import build as build_map
from dataengine.facts import collect
from dataengine.manifest import Manifest
from dataengine.publish.card import evaluation_section, expert_coverage_section
from dataengine.publish.layout import marked, write_layout
from dataengine.report.page import SECTIONS, write_report
from dataengine.rows import CURATED_FEATURES, SAMPLE_FEATURES, write_shards
from dataengine.teacher.throughput import Follower, active_seconds, rate, recorder, timeline

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
GROUPS = [("chat", "en"), ("chat", "fr"), ("code", "en")]


def _row(i: int, kind: str, language: str, **extra) -> dict:
    answer = "word " * (10 + 7 * i)
    return {
        "id": f"r{i:02d}",
        "kind": kind,
        "language": language,
        "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": answer}],
        **extra,
    }


def _manifest(folder: Path, stage: str, rows_in: int | None, rows_out: int, drops=None, stats=None) -> None:
    Manifest(
        stage=stage,
        config_hash="c",
        input_fingerprint="",
        output_fingerprint="o",
        rows_in=rows_in,
        rows_out=rows_out,
        drops=drops or {},
        stats=stats or {},
        timings={"seconds": 12.5},
        run_id="rep-run",
        recipe_hash="r",
        versions={},
    ).write(folder)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A finished distill run's folder: 12 generated rows, 7 kept, 2 held out, trained, evaluated, published."""
    run = tmp_path / "rep"
    run.mkdir()
    # the runner records the pipeline's stages and their folders in run.json
    stages = {
        "generate": {"rows": "generated"},
        "curate": {"kept": "curated", "rejected": "rejected"},
        "judge": {"kept": "judged", "rejected": "judge_rejected"},
        "train": {"student": "students/tiny"},
        "evaluate": {"metrics": "eval"},
        "publish": {"layout": "published"},
        "route": {"map": "routing"},
    }
    (run / "run.json").write_text(json.dumps({"run_id": "rep-run", "recipe": "rep", "stages": stages}))
    generated = [_row(i, *GROUPS[i % 3]) for i in range(12)]
    write_shards(generated, run / "generated", features=SAMPLE_FEATURES)
    timeline_points = [[30.0, 20.5], [90.0, 25.0], [150.0, 23.0]]
    _manifest(
        run / "generated",
        "generate",
        12,
        12,
        stats={"teacher_tokens_per_second": 23.1, "teacher_tokens_per_second_timeline": timeline_points},
    )
    kept, rejected = [], []
    for row in generated:
        i = int(row["id"][1:])
        quality = {"tests_passed": i % 2 == 0} if row["kind"] == "code" else {"language_detected": row["language"]}
        if i in (1, 4, 5, 9, 10):
            rejected.append({**row, **quality, "drop_reason": "truncated" if i < 9 else "near_duplicate"})
        else:
            kept.append({**row, **quality, "dedup_cluster_size": 3 if i == 0 else 1})
    write_shards(kept, run / "curated", features=CURATED_FEATURES)
    write_shards(rejected, run / "rejected", features=CURATED_FEATURES)
    _manifest(run / "curated", "curate", 12, len(kept), drops={"truncated": 3, "near_duplicate": 2})
    # the judge rejects r11 (code) with a mean score of 1.5
    write_shards([r for r in kept if r["id"] != "r11"], run / "judged", features=CURATED_FEATURES)
    judge = {
        "judge_model": "judge-model",
        "threshold": 3.0,
        "score_histogram": {"kept": {"3.0": 2, "4.5": 4}, "rejected": {"1.5": 1}},
        "mean_score_kept": 4.0,
        "mean_score_rejected": 1.5,
        "mean_by_criterion": {"correctness": 3.5, "helpfulness": 3.75},
    }
    _manifest(run / "judged", "judge", len(kept), len(kept) - 1, drops={"judge_low": 1}, stats=judge)
    student = run / "students" / "tiny"
    student.mkdir(parents=True)
    phases = [
        {
            "method": m,
            "steps": 6,
            "seconds": 1.5,
            "resumed_from": None,
            "log_history": [{"loss": 5.0 - s * f, "step": s} for s in range(2, 7, 2)],
        }
        for m, f in (("sft", 0.5), ("offline_topk", 0.3))
    ]
    # an MoE student: its 3 layers' CV of expert load at each logging step, layer 2 collapsing
    phases[0]["expert_load_steps"] = [{"step": s, "cv": [0.1, 0.2, 0.4 * s]} for s in range(2, 7, 2)]
    training = {"student": {"origin": "model"}, "train_rows": 5, "held_out_ids": ["r00", "r02"], "phases": phases}
    (student / "training.json").write_text(json.dumps(training))
    _manifest(student, "train", 7, 5)
    (run / "eval").mkdir()
    (run / "eval" / "metrics.json").write_text(
        json.dumps(
            {
                "held_out_rows": 2,
                "held_out_ids": ["r00", "r02"],
                "before": {
                    "kl_teacher_student": 9.5,
                    "perplexity": 4000.0,
                    "code_pass_rate": 0.0,
                    "language_fidelity": 0.5,
                },
                "after": {
                    "kl_teacher_student": 4.2,
                    "perplexity": 60.0,
                    "code_pass_rate": None,
                    "language_fidelity": 1.0,
                    "intervals": {"perplexity": [40.0, 90.0]},
                },
                # another start the recipe compared, untrained
                "inits": {"every-third": {"parameters": 64e6, "kl_teacher_student": 14.1, "perplexity": 3.2e6}},
                # the teacher on the same rows: its perplexity on its own answers, what passed curation
                "teacher": {
                    "perplexity": 3.1,
                    "code_pass_rate": 1.0,
                    "language_fidelity": 1.0,
                    "intervals": {"perplexity": [2.5, 3.9]},
                },
            }
        )
    )
    _manifest(run / "eval", "evaluate", 2, 2)
    # the publish target also held a row of an earlier run: the funnel counts this run's rows only
    published = pa.Table.from_pylist([*kept[:5], _row(99, "chat", "en")], schema=SAMPLE_FEATURES.arrow_schema)
    write_layout([marked(published, pa.array(["r00"]))], SAMPLE_FEATURES, run / "published", ["language"], 4)
    _manifest(run / "published", "publish", 6, 6)
    # routing of the kept rows through 3 layers of 4 experts (top-2): code on experts 2 and 3, chat on 0 and 1
    routed = [
        RoutedRow(
            r["id"],
            r["kind"],
            r["language"],
            "t",
            True,
            np.array([[[2, 3] if r["kind"] == "code" else [0, 1]] * 3] * 5),
        )
        for r in kept
    ]
    (run / "routing").mkdir()
    (run / "routing" / "map.json").write_text(json.dumps(build_map(routed, 4, 2, 0.25, "en")))
    return run


def test_collect_counts_rows_through_the_stages_from_the_run_folder(run_dir):
    facts = collect(run_dir)
    assert [s.stage for s in facts.stages] == ["generate", "curate", "judge", "train", "evaluate", "publish"]
    # row i is chat/en, chat/fr, code/en for i % 3 = 0, 1, 2; rejected: r01, r04, r10 (fr), r05 (code), r09 (en);
    # the judge rejects r11 (code); held out: r00 (en), r02 (code); published: kept r00, r02, r03, r06, r07
    # (and an earlier run's r99)
    assert facts.funnel == {
        "chat/en": {"generated": 4, "kept": 3, "judged": 3, "trained on": 2, "published": 3},
        "chat/fr": {"generated": 4, "kept": 1, "judged": 1, "trained on": 1, "published": 1},
        "code/en": {"generated": 4, "kept": 3, "judged": 2, "trained on": 1, "published": 1},
    }
    assert facts.drops == {"truncated": 3, "near_duplicate": 2, "judge_low": 1}
    assert facts.judge.score_histogram["rejected"] == {"1.5": 1}
    assert facts.cluster_sizes == {1: 6, 3: 1}
    assert sorted(facts.answer_chars["rejected"]) == sorted(len("word " * (10 + 7 * i)) for i in (1, 4, 5, 9, 10))
    assert facts.losses["sft"] == [(2, 4.0), (4, 3.0), (6, 2.0)]
    # the teacher's code: r02, r08 passed, r05, r11 failed; every chat answer was in its language
    assert facts.teacher_quality == {"code_pass_rate": 0.5, "language_fidelity": 1.0}
    assert facts.throughput[1] == [90.0, 25.0] and facts.tokens_per_second == 23.1


def test_status_prints_the_same_figures_in_the_terminal(run_dir):
    result = CliRunner().invoke(app, ["status", str(run_dir), "--html"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "│ chat/en │ 4 │ 3 │ 3 │ 2 │ 3 │" in out
    assert "│ truncated │ 3 │" in out and "│ near_duplicate │ 2 │" in out and "│ judge_low │ 1 │" in out
    assert "the judge's mean scores (judge-model, threshold 3.0)" in out and "│ 1.5 │ 0 │ 1 │" in out
    assert "│ sft │ 6 │ 4 │ 2 │" in out
    assert "│ KL(teacher ‖ student) │ 9.5 │ 4.2 │ — │" in out and "│ code pass rate │ 0 │ n/a │ 1 │" in out
    assert "│ perplexity │ 4000 │ 60 [40, 90] │ 3.1 [2.5, 3.9] │" in out
    assert "min 20.5, max 25.0, run 23.1" in out
    assert (run_dir / "report.html").is_file()


def test_numbers_read_the_same_in_every_renderer(run_dir):
    """`—`: the cell means nothing for that row; `n/a`: it does, but the run could not measure it."""
    assert (numbers.count(None), numbers.metric(None)) == ("—", "n/a")
    assert numbers.metric(2_634_512.7) == "2,634,513" and numbers.metric(6.8312) == "6.831"
    assert numbers.metric(0.0) == "0" and numbers.seconds(12.6) == "13"
    page = write_report(run_dir).read_text()
    # the page's evaluation table: KL has no teacher figure (—); the trained student wrote no code (n/a)
    assert "<td>KL(teacher ‖ student)</td><td>9.5</td><td>4.2</td><td>—</td>" in page
    # the teacher's figures are its own on the held-out rows (metrics.json), beside the students'; in brackets
    # the bootstrap interval where the evaluation measured one
    assert "<td>code pass rate</td><td>0</td><td>n/a</td><td>1</td>" in page
    assert "<td>perplexity</td><td>4000</td><td>60 [40, 90]</td><td>3.1 [2.5, 3.9]</td>" in page
    assert (
        '<table id="compared-inits">' in page and "<tr><td>every-third</td><td>14.1</td><td>3,200,000</td></tr>" in page
    )
    evaluation = collect(run_dir, rows=False).evaluation
    card = evaluation_section(evaluation, pa.array(["r00", "r02"]))
    assert "| kl_teacher_student | 9.5 | 4.2 | — |" in card and "| code_pass_rate | 0 | n/a | 1 |" in card
    assert "| perplexity | 4000 | 60 [40, 90] | 3.1 [2.5, 3.9] |" in card
    # which rows the student was evaluated on, against the published test split
    assert "held-out rows (the test split)" in "\n".join(card)
    assert "(this run's rows of the test split)" in "\n".join(
        evaluation_section(evaluation, pa.array(["r02", "r00", "r99"]))
    )
    assert "(not the same rows as the test split)" in "\n".join(
        evaluation_section(evaluation, pa.array(["r00", "r01"]))
    )


def test_status_refuses_a_folder_that_is_not_a_run(tmp_path):
    result = CliRunner().invoke(app, ["status", str(tmp_path)])
    assert "is not a run folder" in str(result.exception)


def test_the_page_draws_the_expert_load_of_the_kept_rows(run_dir):
    facts = collect(run_dir)
    assert facts.routing["slices"]["kind"]["code"]["load"][0] == [0.0, 0.0, 2.0, 2.0]
    page = write_report(run_dir).read_text()
    assert 'id="experts" data-drawn="true"' in page and "all kept rows" in page and "kind code" in page
    card = "\n".join(expert_coverage_section(facts.routing))
    # chat on experts 0-1, code on 2-3: every layer loads them 3:3:4:4 over 7 rows of 5 tokens
    assert "3 MoE layers, 4 experts, top-2) routes the 7 kept rows' 35 answer tokens" in card
    # languages are compared on chat rows: en's and fr's chat rows both load experts 0-1 (en's code rows,
    # on 2-3, would otherwise make it look like a different language)
    assert "| fr | 0 |" in card
    # one batch of the 35 tokens (70 slots, top-2): at factor 1 each expert takes ceil(35 * 2 / 4) = 18, and
    # experts 2 and 3 hold 20 each: 4 of 70 slots dropped in every layer; at 1.25 (22) none
    assert "| 1 | 5.7% | 0 | 5.7% |" in card and "| 1.25 | 0.0% |" in card
    # 15:15:20:20 needs 6 extra copies a layer before no copy carries over 1.1x the mean (by hand: 2, 3, 0, 1, 2, 3)
    assert "would add 18 expert copies over 3 layers" in card and "(most in layer 0: 6)" in card
    assert '<section id="capacity">' in page and "over 35 answer tokens in one batch (fewer than 4096)" in page


def test_an_moe_students_load_is_read_from_its_phase_and_a_dense_one_has_none():
    from dataengine.facts import Phase

    record = {"method": "sft", "steps": 4, "seconds": 1.0, "resumed_from": None, "log_history": []}
    assert Phase.of(record).expert_cv == []  # a dense student routes nothing
    steps = [{"step": 2, "cv": [0.1, 0.3]}, {"step": 4, "cv": [0.1, 1.9]}]
    assert Phase.of(record | {"expert_load_steps": steps}).expert_cv == [(2, [0.1, 0.3]), (4, [0.1, 1.9])]


def test_a_run_that_only_generated_gets_a_page_that_says_what_is_missing(run_dir):
    for folder in ("curated", "rejected", "students", "eval", "published", "routing"):
        shutil.rmtree(run_dir / folder)
    page = write_report(run_dir).read_text()
    assert 'id="funnel" data-drawn="true"' in page and 'id="throughput" data-drawn="true"' in page
    assert 'id="loss" data-drawn="false"' in page and "no student was trained in this run" in page


def test_throughput_timeline_spreads_tokens_over_each_stretch_of_generation(tmp_path, monkeypatch):
    ends = iter([104.0, 104.0, 1002.0])
    monkeypatch.setattr("dataengine.teacher.throughput.time.time", lambda: next(ends))
    with recorder(tmp_path / "t") as record:
        record(40, 100.0)  # ran 100-104 s
        record(20, 102.0)  # ran 102-104 s, alongside
        record(60, 1000.0)  # after a crash: ran 1000-1002 s
    # 6 s of generation in 3 bins of 2 s: the first stretch gets two (40 tokens split 20/20, plus the
    # second rollout's 20 in the later one), the resumed stretch one
    assert timeline([tmp_path / "t"], bins=3) == [[1.0, 10.0], [3.0, 20.0], [901.0, 30.0]]


def test_generation_seconds_span_each_round_without_the_stages_between(tmp_path, monkeypatch):
    """Top-up rounds each write their own folder; the minute of curation between two rounds is no generation."""
    ends = iter([104.0, 174.0])
    monkeypatch.setattr("dataengine.teacher.throughput.time.time", lambda: next(ends))
    with recorder(tmp_path / "round-0") as record:
        record(40, 100.0)  # ran 100-104 s
    with recorder(tmp_path / "round-1") as record:
        record(60, 170.0)  # ran 170-174 s, 66 s later (under the gap that splits a stretch)
    rounds = [tmp_path / "round-0", tmp_path / "round-1"]
    assert active_seconds(rounds) == 8.0 and rate(rounds) == 12.5


def test_the_progress_follower_counts_only_what_a_pass_adds(tmp_path, monkeypatch):
    ends = iter([104.0, 110.0, 130.0])
    monkeypatch.setattr("dataengine.teacher.throughput.time.time", lambda: next(ends))
    with recorder(tmp_path / "t") as record:
        record(40, 100.0)  # an earlier pass: not this one's
    follower = Follower(tmp_path / "t")
    assert follower() == (0, 0) and follower.seconds == 0.0
    with recorder(tmp_path / "t") as record:
        record(20, 105.0)
        record(30, 108.0)
    assert follower() == (2, 50) and follower.seconds == 130.0 - 105.0  # first start to last end
    assert follower() == (2, 50)  # nothing new


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: `make test` installs Debian's chromium package")
        pytest.skip("chromium is not installed (`make test` installs it; apt-get install chromium)")
    return path


@contextlib.contextmanager
def headless_page(page_file: Path) -> Iterator[tuple[Any, list[str]]]:
    """`page_file` open in headless Chromium (Playwright), and the problems it logs as it is used: console errors
    and warnings, page errors, dialogs (a script a row smuggled in) and requests (nothing may be fetched)."""
    from playwright.sync_api import sync_playwright

    executable = _chromium()
    problems: list[str] = []
    with sync_playwright() as pw:
        # no network here: the flags keep Chromium from trying to reach Google's services at start
        browser = pw.chromium.launch(
            executable_path=executable,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.on(
            "console",
            lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None,
        )
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
        page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
        page.goto(page_file.as_uri())
        try:
            yield page, problems
        finally:
            browser.close()


def test_the_report_renders_in_headless_chromium_with_every_figure(run_dir):
    with headless_page(write_report(run_dir)) as (page, problems):
        for key, title, _, _ in SECTIONS:
            figure = page.locator(f"figure#{key}")
            assert figure.get_attribute("data-drawn") == "true", key
            assert figure.locator("h2").inner_text() == title
            box = figure.locator("svg").first.bounding_box()
            assert box is not None and box["width"] > 200 and box["height"] > 100, (key, box)
        assert page.locator("#stages tbody tr").count() == 6
        assert "4.2" in page.locator("#evaluation-table").inner_text()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    assert problems == []
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000


def test_each_routed_run_records_its_expert_load_and_drift_in_the_history():
    from dataengine.publish.stage import routing_drift

    even = {"overall": {"load": [[1.0, 1.0, 1.0, 1.0]]}}
    skewed = {"overall": {"load": [[2.0, 2.0, 0.0, 0.0]]}}
    first = routing_drift([{"run_id": "a"}], even)  # no earlier run routed: nothing to drift from
    assert first == {"expert_load": [[1.0, 1.0, 1.0, 1.0]], "routing_drift": None}
    second = routing_drift([{"run_id": "a"}, {"run_id": "b", **first}], skewed)
    # JS([.5, .5, 0, 0], [.25] * 4), as in the card test above
    assert second["routing_drift"] == pytest.approx(0.3113, abs=1e-4)
    wider = routing_drift([{"run_id": "b", **first}], {"overall": {"load": [[1.0] * 8]}})
    assert wider["routing_drift"] is None  # another teacher shape: not comparable


def test_answer_lengths_are_counted_in_polars_as_python_counts_them(tmp_path):
    from dataengine.rows import answer
    from dataengine.rows.frames import scan
    from dataengine.rows.queries import answer_chars

    turns = [
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "héllo wörld ✓"}],
        [],
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}],
        [{"role": "assistant", "content": "x" * 300}],
    ]
    made = [{"id": f"r{i}", "kind": "chat", "language": "en", "messages": m} for i, m in enumerate(turns)]
    write_shards(made[:2], tmp_path / "a", features=SAMPLE_FEATURES)
    write_shards(made[2:], tmp_path / "b", features=SAMPLE_FEATURES)
    got = [*answer_chars(scan(tmp_path / "a")), *answer_chars(scan(tmp_path / "b"))]
    assert got == [len(answer(r)) for r in made] == [13, 0, 0, 300]
    assert len(answer_chars(scan(tmp_path / "nothing"))) == 0  # a stage with no output
