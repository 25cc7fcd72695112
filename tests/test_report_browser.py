"""The run report's row browser: a seeded sample of the kept and rejected rows of each group, with why each was
dropped, the judge's verdict and the router's entropy; its byte cap on a large run; escaped hostile text; and its
filters, clicked in headless Chromium."""

from __future__ import annotations

import json
import re
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
import pytest

from dataengine.report.browser import SAMPLE_ROWS, SECTION_BYTES, TEXT_CHARS, sample, seed_of
from dataengine.report.page import write_report
from dataengine.rows import CURATED_FEATURES, ROUTED_FEATURES, read_rows, write_shards
from dataengine.rows.frames import scan
from tests.test_report import ARTIFACTS, _manifest, headless_page

HOSTILE = "</script><script>alert(1)</script>"
STAGES = {
    "curate": {"kept": "curated", "rejected": "rejected"},
    "judge": {"kept": "judged", "rejected": "judge_rejected"},
    "route": {"map": "routing"},
}
# what the judge's manifest must say for the report's judge figure
STATS = {
    "judge": {"judge_model": "m", "threshold": 3.0, "score_histogram": {"kept": {"4.0": 6}, "rejected": {"1.0": 1}}}
}


def _row(i: int, kind: str, language: str, answer: str = "", **extra) -> dict:
    turns = [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"question {i}"}]
    return {
        "id": f"r{i:05d}",
        "kind": kind,
        "language": language,
        "messages": [*turns, {"role": "assistant", "content": answer or f"answer {i}"}],
        **extra,
    }


def _write_run(run: Path, run_id: str, stages: dict, outputs: dict[str, list[dict]]) -> Path:
    """A run folder holding `outputs` (folder -> rows), with a manifest in each stage's first output."""
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"run_id": run_id, "recipe": "browse", "stages": stages}))
    for folder, rows in outputs.items():
        write_shards(rows, run / folder, features=ROUTED_FEATURES if folder == "routing" else CURATED_FEATURES)
    for stage, roles in stages.items():
        first = next(iter(roles.values()))
        _manifest(run / first, stage, None, len(outputs.get(first, [])), stats=STATS.get(stage))
    return run


def _verdict(score: int, why: str) -> dict:
    return {
        "judge_scores": {"correctness": score, "helpfulness": score},
        "judge_score": float(score),
        "judge_rationale": why,
    }


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """Curation kept 7 of 12 rows over three groups; the judge kept 6 of them; the route stage routed the kept
    rows, one of them as vLLM returned it (no router probabilities, so no entropy)."""
    groups = [("chat", "en"), ("chat", "fr"), ("code", "en")]
    rows = [_row(i, *groups[i % 3]) for i in range(12)]
    rejected = [
        {
            **r,
            "drop_step": "truncated" if i < 9 else "near_dedup",
            "drop_reason": "truncated" if i < 9 else "near_duplicate",
        }
        for i, r in enumerate(rows)
        if i in (1, 4, 5, 9, 10)
    ]
    kept = [r for i, r in enumerate(rows) if i not in (1, 4, 5, 9, 10)]
    judged = [{**r, **_verdict(4, f"good {r['id']}")} for r in kept if r["id"] != "r00011"]
    judge_low = [
        {**r, **_verdict(1, "wrong answer"), "drop_step": "judge", "drop_reason": "judge_low"}
        for r in kept
        if r["id"] == "r00011"
    ]
    routing = [
        {
            "id": r["id"],
            "kind": r["kind"],
            "language": r["language"],
            "kept": True,
            "answer_tokens": 3,
            "routing_signature": [[1, 2]],
            "router_entropy": None if r["id"] == "r00003" else 1.25,
            "router_margin": None if r["id"] == "r00003" else 0.5,
            "routed_by": "vllm" if r["id"] == "r00003" else "replay",
        }
        for r in judged
    ]
    outputs = {"curated": kept, "rejected": rejected, "judged": judged, "judge_rejected": judge_low, "routing": routing}
    return _write_run(tmp_path / "run", "browse-run", STAGES, outputs)


class _Rows(HTMLParser):
    """The browser's rows as the page holds them: each <details>' data attributes and its text."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict] = []
        self._open = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "details":
            self.rows.append({**{k.removeprefix("data-"): v for k, v in attrs}, "text": ""})
            self._open = True

    def handle_endtag(self, tag: str) -> None:
        self._open = self._open and tag != "details"

    def handle_data(self, data: str) -> None:
        if self._open:
            self.rows[-1]["text"] += data


def _section(page: str) -> str:
    return page[page.index('<section id="rows"') : page.index("</section>", page.index('<section id="rows"'))]


def _browsed(page: str) -> list[dict]:
    parser = _Rows()
    parser.feed(_section(page))
    return parser.rows


def _by_id(page: str) -> dict[str, dict]:
    """The browser's rows by id: a row's line reads `status group · id · ...`."""
    return {r["text"].split("·")[1].strip(): r for r in _browsed(page)}


def _cells(page: str) -> list[list]:
    blob = re.search(r'<script type="application/json" id="rows-cells">(.*?)</script>', page, re.S)
    return json.loads(blob.group(1))


def test_the_browser_holds_kept_and_rejected_rows_of_each_group_with_why_they_were_dropped(run_dir):
    page = write_report(run_dir).read_text()
    rows = _by_id(page)
    # the run's kept rows are the judge's; its rejected rows curation's and the judge's
    assert sorted(rows) == [f"r{i:05d}" for i in range(12)]
    by_group = {(r["group"], r["status"]) for r in rows.values()}
    assert by_group == {(g, s) for g in ("chat/en", "chat/fr", "code/en") for s in ("kept", "rejected")}
    assert rows["r00001"]["reason"] == "truncated" and "dropped at truncated: truncated" in rows["r00001"]["text"]
    assert rows["r00009"]["reason"] == "near_duplicate" and "dropped at near_dedup" in rows["r00009"]["text"]
    # the judge's verdict, on the rows it kept and the one it rejected
    low = rows["r00011"]
    assert (low["status"], low["reason"]) == ("rejected", "judge_low") and "dropped at judge: judge_low" in low["text"]
    assert "judge 1 (helpfulness 1, correctness 1)" in low["text"] and "judge: wrong answer" in low["text"]
    assert (
        "judge 4 (helpfulness 4, correctness 4)" in rows["r00000"]["text"] and "good r00000" in rows["r00000"]["text"]
    )
    # the route stage's entropy, n/a for the row vLLM routed; none at all for rows it never routed
    assert "router entropy 1.25 nats, margin 0.5" in rows["r00000"]["text"]
    assert "router entropy n/a nats" in rows["r00003"]["text"]
    assert "router entropy" not in rows["r00001"]["text"]
    # chat turns read as turns: role, then content
    assert "systembe brief" in rows["r00000"]["text"] and "userquestion 0" in rows["r00000"]["text"]
    assert "assistantanswer 0" in rows["r00000"]["text"]
    # what the run holds of each group, status and reason, for the page's counts
    assert ["chat/en", "kept", "", 3] in _cells(page) and ["code/en", "rejected", "judge_low", 1] in _cells(page)
    assert (
        f"at most {SAMPLE_ROWS} kept rows per kind/language group" in page
        and "seeded by the run id (browse-run)" in page
    )


def test_a_run_without_curation_says_so(tmp_path):
    run = _write_run(
        tmp_path / "run", "gen-run", {"generate": {"rows": "generated"}}, {"generated": [_row(0, "chat", "en")]}
    )
    page = write_report(run).read_text()
    assert '<section id="rows" data-drawn="false">' in page and "Nothing to show: curation has not run." in page
    assert "<script" not in page


LARGE_GROUPS = [(kind, f"l{n}") for kind in ("chat", "code") for n in range(10)]
LARGE_REASONS = ["truncated", "length", "refusal", "near_duplicate"]
LARGE_ANSWER = "a long answer " * 60


@pytest.fixture(scope="module")
def large_run(tmp_path_factory) -> Path:
    """20,000 rows curated, half kept, over 20 groups and 4 drop reasons, with long answers."""
    kept, rejected = [], []
    for i in range(20_000):
        row = _row(i, *LARGE_GROUPS[i % len(LARGE_GROUPS)], answer=LARGE_ANSWER)
        if (i // len(LARGE_GROUPS)) % 2:
            kept.append(row)
        else:
            reason = LARGE_REASONS[(i // (2 * len(LARGE_GROUPS))) % len(LARGE_REASONS)]
            rejected.append({**row, "drop_step": reason, "drop_reason": reason})
    stages = {"curate": {"kept": "curated", "rejected": "rejected"}}
    outputs = {"curated": kept, "rejected": rejected}
    return _write_run(tmp_path_factory.mktemp("large") / "run", "big-run", stages, outputs)


def test_a_large_run_is_sampled_under_the_stated_byte_cap(large_run):
    """The page holds a seeded sample of every group and reason under the byte cap, the same each time."""
    page = write_report(large_run).read_text()
    section = _section(page)
    assert len(section.encode()) <= SECTION_BYTES
    rows = _browsed(page)
    # each group's first rows made it in before any group's later ones: every group and reason has some
    shown = Counter((r["group"], r["status"], r["reason"]) for r in rows)
    assert set(shown) == {(g, s, r) for g, s, r, _ in _cells(page)} and max(shown.values()) <= SAMPLE_ROWS
    assert len(_cells(page)) == len(LARGE_GROUPS) * (1 + len(LARGE_REASONS))
    assert sum(n for *_, n in _cells(page)) == 20_000
    assert "The byte cap left out" in section
    assert f"[… {len(LARGE_ANSWER) - TEXT_CHARS} of {len(LARGE_ANSWER)} characters cut …]" in section
    # seeded by the run id: the report written again shows the same rows
    assert _section(write_report(large_run).read_text()) == section


def test_each_sample_is_the_rows_whose_ids_hash_lowest_under_the_run_seed(large_run):
    """The sample read in two streamed passes is exactly each cell's lowest seeded hashes, ranked over all rows."""
    seed = seed_of("big-run")
    frame = scan(large_run / "rejected")
    everything = frame.select("id", "kind", "language", "drop_reason").collect()
    for cell in sample(frame, "rejected", seed):
        kind, language = cell.group.split("/")
        rows = everything.filter(kind=kind, language=language, drop_reason=cell.reason)
        lowest = rows.with_columns(key=pl.col("id").hash(seed)).sort("key", "id").head(SAMPLE_ROWS)
        assert (cell.rows, cell.ids) == (len(rows), lowest["id"].to_list())
    assert sample(frame, "rejected", seed_of("another-run"))[0].ids != sample(frame, "rejected", seed)[0].ids


def test_hostile_row_text_is_escaped(run_dir):
    hostile = [
        {
            **_row(50, "chat", "en", answer=HOSTILE),
            "drop_step": HOSTILE,
            "drop_reason": HOSTILE,
            "judge_rationale": HOSTILE,
        },
        {**_row(51, "chat", 'en"><img src=x onerror=alert(2)>'), "drop_step": "custom", "drop_reason": "custom"},
    ]
    write_shards(hostile, run_dir / "judge_rejected", features=CURATED_FEATURES)
    page = write_report(run_dir).read_text()
    section = _section(page)
    assert "<script>alert" not in page and "<img" not in page
    assert section.count("<script") == 2  # the counts' JSON and the browser's script, nothing a row brought
    assert "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in section
    # the counts' JSON holds the reason as it was, and nothing in it can close its element
    assert ["chat/en", "rejected", HOSTILE, 1] in _cells(page)
    texts = _by_id(page)
    assert texts["r00050"]["reason"] == HOSTILE and f"judge: {HOSTILE}" in texts["r00050"]["text"]
    assert texts["r00051"]["group"] == 'chat/en"><img src=x onerror=alert(2)>'


def test_the_filters_show_only_the_rows_picked_in_headless_chromium(run_dir):
    hostile = {**_row(50, "chat", "en", answer=HOSTILE), "drop_step": "custom", "drop_reason": HOSTILE}
    judge_low = read_rows(run_dir / "judge_rejected")
    write_shards([*judge_low, hostile], run_dir / "judge_rejected", features=CURATED_FEATURES)
    with headless_page(write_report(run_dir)) as (page, problems):
        shown = page.locator("#rows-list details:visible")
        summary = page.locator("#rows-summary")
        assert (
            shown.count() == 13 and summary.inner_text() == "13 sampled rows shown, of 13 rows of the run that match."
        )
        page.select_option("#rows-status", "rejected")
        assert shown.count() == 7
        assert {shown.nth(i).get_attribute("data-status") for i in range(7)} == {"rejected"}
        page.select_option("#rows-reason", "judge_low")
        assert shown.count() == 1 and shown.first.get_attribute("data-reason") == "judge_low"
        assert summary.inner_text() == "1 sampled rows shown, of 1 rows of the run that match."
        shown.first.locator("summary").click()  # open it: its turns and the judge's rationale
        assert "wrong answer" in shown.first.inner_text() and shown.first.locator(".turn").count() == 3
        page.select_option("#rows-reason", HOSTILE)  # a hostile reason is an option like any other, and inert
        assert shown.count() == 1 and HOSTILE in shown.first.locator("summary").inner_text()
        page.select_option("#rows-reason", "")
        page.select_option("#rows-group", "chat/fr")
        assert {shown.nth(i).get_attribute("data-group") for i in range(shown.count())} == {"chat/fr"}
        ARTIFACTS.mkdir(exist_ok=True)
        page.locator("#rows").screenshot(path=str(ARTIFACTS / "report-rows.png"))
    assert problems == []
    assert (ARTIFACTS / "report-rows.png").stat().st_size > 5_000
