"""`dataengine rows`: a run's stage folders as tables, queried with polars, shown or written; errors in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from dataengine import cli
from dataengine.cli import app
from dataengine.errors import UserError
from dataengine.rows import CURATED_FEATURES, SAMPLE_FEATURES, write_shards
from tests.test_report import _manifest

GROUPS = [("chat", "en"), ("chat", "fr"), ("code", "en")]
HOSTILE = "[bold]not markup[/bold] </td>"


def _row(i: int) -> dict:
    kind, language = GROUPS[i % 3]
    return {
        "id": f"r{i:02d}",
        "kind": kind,
        "language": language,
        "messages": [
            {"role": "user", "content": f"question {i}" + (f" {HOSTILE}" if i == 4 else "")},
            {"role": "assistant", "content": f"answer {i} " + "word " * (i * 30)},
        ],
        "completion_tokens": 10 * i,
    }


def _run(
    folder: Path, dropped: dict[int, str], load: list[list[float]] | None = None, judge_low: tuple[int, ...] = ()
) -> Path:
    """A run that generated 12 rows and dropped those `dropped` names, for the reasons it gives; with `load`, a
    routing map whose overall expert load (layers x experts) it is; with `judge_low`, a judge that dropped those
    of the kept rows."""
    folder.mkdir(parents=True)
    stages = {"generate": {"rows": "generated"}, "curate": {"kept": "curated", "rejected": "rejected"}}
    if judge_low:
        stages["judge"] = {"kept": "judged", "rejected": "judge_rejected"}
    if load is not None:
        stages["route"] = {"map": "routing"}
        (folder / "routing").mkdir()
        (folder / "routing" / "map.json").write_text(json.dumps({"overall": {"load": load}}))
    (folder / "run.json").write_text(json.dumps({"run_id": folder.name, "recipe": "r", "stages": stages}))
    rows = [_row(i) for i in range(12)]
    write_shards(rows, folder / "generated", features=SAMPLE_FEATURES)
    write_shards([r for r in rows if int(r["id"][1:]) not in dropped], folder / "curated", features=CURATED_FEATURES)
    rejected = [{**rows[i], "drop_reason": reason, "drop_step": reason} for i, reason in dropped.items()]
    write_shards(rejected, folder / "rejected", features=CURATED_FEATURES)
    reasons = {reason: list(dropped.values()).count(reason) for reason in set(dropped.values())}
    _manifest(folder / "curated", "curate", 12, 12 - len(dropped), reasons)
    if judge_low:
        kept = [r for r in rows if int(r["id"][1:]) not in dropped]
        write_shards(
            [r for r in kept if int(r["id"][1:]) not in judge_low], folder / "judged", features=CURATED_FEATURES
        )
        verdicts = {"judge_model": "j", "threshold": 3.0, "score_histogram": {"kept": {}, "rejected": {}}}
        drops = {"judge_low": len(judge_low)}
        _manifest(folder / "judged", "judge", len(kept), len(kept) - len(judge_low), drops, verdicts)
    return folder


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run that generated 12 rows, kept 8 and dropped 4 (3 truncated, 1 wrong_language)."""
    return _run(tmp_path / "run", {1: "truncated", 5: "truncated", 7: "truncated", 10: "wrong_language"})


@pytest.fixture(autouse=True)
def wide(monkeypatch):
    """A 200-column terminal: the table's cells are checked whole, not folded."""
    monkeypatch.setattr(cli.console, "_width", 200)


def _rows(*args: str):
    result = CliRunner().invoke(app, ["rows", *args])
    if isinstance(result.exception, UserError):  # `main` prints it as one line after "error:", exit 2
        return 2, str(result.exception)
    return result.exit_code, result.output


def test_without_a_table_it_lists_the_runs_tables_with_their_rows(run_dir):
    code, out = _rows(str(run_dir))
    assert code == 0, out
    counts = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in out.splitlines() if "│ " in line}
    assert {k: counts[k] for k in ("generated", "curated", "rejected")} == {
        "generated": "12",
        "curated": "8",
        "rejected": "4",
    }


def test_a_condition_columns_order_and_limit_pick_the_rows(run_dir, tmp_path):
    out = tmp_path / "picked.jsonl"
    args = [str(run_dir), "curated", "--where", "kind = 'chat' and completion_tokens >= 30"]
    code, shown = _rows(
        *args, "--columns", "id,completion_tokens", "--sort", "-completion_tokens", "-n", "3", "-o", str(out)
    )
    assert code == 0, shown
    picked = [json.loads(line) for line in out.read_text().splitlines()]
    assert picked == [{"id": f"r{i:02d}", "completion_tokens": 10 * i} for i in (9, 6, 4)]


def test_the_terminal_shows_turns_and_reasons_and_escapes_what_rows_say(run_dir):
    code, out = _rows(str(run_dir), "rejected", "--sort", "id")
    assert code == 0, out
    assert "rejected: 4 rows" in out
    for line in ("user: question 1", "assistant: answer 1", "wrong_language", "truncated"):
        assert line in out
    # texts are cut, and say by how much
    assert "… (+" in out and "chars)" in out
    # the kept rows' empty drop columns are left out; the others are named under the table
    code, out = _rows(str(run_dir), "curated", "-n", "5")
    assert "drop_reason" not in out.split("other columns")[0] and "other columns (--columns to show them)" in out
    assert "curated: 5 rows" in out
    # a row's text is printed as text, never read as rich markup
    code, out = _rows(str(run_dir), "generated", "--where", "id = 'r04'")
    assert HOSTILE in out


def test_a_whole_sql_query_runs_over_the_tables_by_folder_name(run_dir, tmp_path):
    query = "select drop_reason, count(*) as n from rejected group by 1 order by 2 desc"
    code, out = _rows(str(run_dir), "--sql", query)
    assert code == 0, out
    assert [line.split("│")[1:3] for line in out.splitlines() if "truncated" in line or "wrong_language" in line] == [
        [" truncated      ", " 3 "],
        [" wrong_language ", " 1 "],
    ]
    # a join of two stages, written to parquet and csv
    join = "select g.id, r.drop_reason from generated g left join rejected r on g.id = r.id order by g.id"
    for suffix in (".parquet", ".csv"):
        code, out = _rows(str(run_dir), "--sql", join, "-o", str(tmp_path / f"j{suffix}"))
        assert code == 0, out
        frame = pl.read_parquet(tmp_path / "j.parquet") if suffix == ".parquet" else pl.read_csv(tmp_path / "j.csv")
        assert frame.height == 12 and frame.filter(pl.col("drop_reason").is_not_null()).height == 4


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["curatd"], "no table 'curatd' in this run; its tables: generated, curated, rejected"),
        (["curated", "--where", "lang = 'fr'"], 'unable to find column "lang"'),
        (["curated", "--where", "language ="], "--where 'language =': unable to parse"),
        (["curated", "--columns", "id,nope"], "--columns: no column 'nope'; the columns: id, messages,"),
        (["curated", "--sort", "-nope"], "--sort: no column 'nope'"),
        (["--sql", "selec * from curated"], "the tables: generated, curated, rejected"),
        (["--sql", "select * from nope"], "relation 'nope' was not found"),
        (["curated", "--sql", "select 1"], "--sql is a whole query"),
        (["curated", "-o", "x.csv"], "csv cannot hold the nested columns messages"),
        (["curated", "-o", "x.txt"], "write .jsonl, .parquet or .csv (got '.txt')"),
    ],
)
def test_a_bad_query_is_one_line_that_names_what_exists(run_dir, args, said):
    code, out = _rows(str(run_dir), *args)
    assert code == 2 and said in out and "\n" not in out, out


def test_a_folder_that_is_not_a_run_is_refused(tmp_path):
    code, out = _rows(str(tmp_path), "curated")
    assert code == 2 and "is not a run folder" in out


def _cells(out: str, first: str) -> list[str]:
    """The cells of the table row that starts with `first`."""
    (line,) = [line for line in out.splitlines() if line.startswith(f"│ {first} ")]
    return [cell.strip() for cell in line.strip("│").split("│")][1:]


def test_two_runs_side_by_side_kept_per_group_drops_lengths_and_drift(tmp_path):
    night1 = _run(tmp_path / "night1", {1: "truncated", 5: "truncated"}, load=[[1.0, 1.0], [1.5, 0.5]])
    night2 = _run(tmp_path / "night2", {1: "truncated", 4: "refusal", 10: "refusal"}, load=[[1.0, 1.0], [0.5, 1.5]])
    code, out = _rows(str(night1), "--against", str(night2))
    assert code == 0, out
    assert _cells(out, "chat/fr") == ["3 of 4", "1 of 4"]  # r01, then r01, r04 and r10 (chat/fr) dropped
    assert _cells(out, "code/en") == ["3 of 4", "4 of 4"] and _cells(out, "chat/en") == ["4 of 4", "4 of 4"]
    assert _cells(out, "refusal") == ["0", "2"] and _cells(out, "truncated") == ["2", "1"]
    assert _cells(out, "rows")[0] == "10" and _cells(out, "rows")[1] == "9"
    # layer 0 the same, layer 1 mirrored: JS(0.75/0.25 || 0.25/0.75) = 0.189 bits, mean over 2 layers 0.09
    assert _cells(out, "mean over layers") == ["0", "0.09436"]
    assert _cells(out, "largest layer")[1] == "0.1887 (layer 1)"


def test_the_kept_rows_compared_are_the_last_steps_those_the_drops_below_them_add_up_to(tmp_path):
    curated = _run(tmp_path / "curated", {1: "truncated"})
    judged = _run(tmp_path / "judged", {1: "truncated"}, judge_low=(0, 3))  # two chat/en rows
    code, out = _rows(str(curated), "--against", str(judged))
    assert code == 0, out
    assert "rows kept per group (kept / judged; of those generated)" in " ".join(out.split())
    assert _cells(out, "chat/en") == ["4 of 4", "2 of 4"] and _cells(out, "judge_low") == ["0", "2"]


def test_a_routing_map_without_layers_is_no_drift_and_markup_in_rows_stays_text(tmp_path):
    first = _run(tmp_path / "a", {}, load=[])  # routed no rows
    second = _run(tmp_path / "b", {}, load=[])
    code, out = _rows(str(first), "--against", str(second))
    assert code == 0 and "expert load drift" not in out, out
    hostile = {**_row(0), "language": "x[/bold]", "messages": [{"role": "[/x]", "content": "[red]hi[/red]"}]}
    write_shards([hostile], first / "generated", features=SAMPLE_FEATURES)
    code, out = _rows(str(first), "generated")
    assert code == 0 and "[/x]: [red]hi[/red]" in out and "x[/bold]" in out, out
    code, out = _rows(str(first), "--against", str(second))
    assert code == 0 and "x[/bold]" in out, out
    status = CliRunner().invoke(app, ["status", str(first)])  # the same rows in the run's figures
    assert status.exit_code == 0 and "chat/x[/bold]" in status.output, status.output


def test_the_cli_prints_a_query_that_looks_like_markup_as_it_was_given(run_dir):
    query = "drop_reason like '%[/INST]%' and nosuch = 1"
    done = subprocess.run(
        [sys.executable, "-m", "dataengine.cli", "rows", str(run_dir), "rejected", "--where", query],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    said = " ".join(done.stderr.split())  # folded at the terminal's width
    assert "like '%[/INST]%'" in said and 'unable to find column "nosuch"' in said


def test_a_file_that_cannot_be_written_is_one_line_and_leaves_nothing(run_dir, tmp_path):
    (tmp_path / "taken.jsonl").mkdir()
    (tmp_path / "blocker").write_text("a file")
    for args, said in (
        (["curated", "-o", str(tmp_path / "taken.jsonl")], "--output"),
        (["curated", "-o", str(tmp_path / "blocker" / "x.parquet")], "--output"),
        (["curated", "--where", "nosuch = 1", "-o", str(tmp_path / "x.csv")], 'unable to find column "nosuch"'),
        (["--sql", "select nosuch from curated", "-o", str(tmp_path / "y.csv")], "nosuch"),
    ):
        code, out = _rows(str(run_dir), *args)
        assert code == 2 and said in out and "\n" not in out, (args, out)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "run") == ["blocker", "taken.jsonl"]
    code, out = _rows(str(run_dir), "--where", "kind = 'code'", "-o", str(tmp_path / "z.jsonl"))
    assert code == 2 and "query a table: name one, or give --sql" in out


def test_the_last_scheduled_runs_of_a_recipe_side_by_side(tmp_path):
    home = tmp_path / "runs" / "nightly"
    for stamp in ("20261201T020000Z", "20261202T020000Z", "20261203T020000Z"):
        _run(home / "scheduled" / stamp, {int(stamp[6:8]): "truncated"})
    code, out = _rows(str(home), "--last", "2")
    assert code == 0, out
    assert "20261201T020000Z" not in out and _cells(out, "truncated") == ["1", "1"]
    assert "runs: 20261202T020000Z" in out
    code, said = _rows(str(tmp_path / "runs" / "other"), "--last", "2")
    assert code == 2 and "holds 0 scheduled run(s); --last compares at least 2" in said
    code, said = _rows(str(home), "curated", "--last", "2")
    assert code == 2 and "give no table, query, --limit or --output with them" in said


def test_a_scheduled_runs_report_puts_it_beside_the_run_before(tmp_path):
    from dataengine.report.page import write_report

    home = tmp_path / "runs" / "nightly"
    first = _run(home / "scheduled" / "20261201T020000Z", {1: "truncated"})
    second = _run(home / "scheduled" / "20261202T020000Z", {1: "truncated", 4: "refusal"})
    page = write_report(second).read_text()
    against = page.split('<section id="against">')[1].split("</section>")[0]
    assert "<th>20261201T020000Z</th><th>20261202T020000Z</th>" in against
    assert "<tr><td>refusal</td><td>0</td><td>1</td></tr>" in against
    assert "<tr><td>chat/fr</td><td>3 of 4</td><td>2 of 4</td></tr>" in against
    # the first run has none before it; a run outside a schedule is never compared
    assert 'id="against"' not in write_report(first).read_text()
    assert 'id="against"' not in write_report(_run(tmp_path / "alone", {})).read_text()
