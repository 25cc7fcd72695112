"""The numbers every renderer shows of a run are the ones they showed before polars counted them.

tests/data/queries_golden.json was written by this module's `measure` at commit 70bf5e8 (before
dataengine/rows/queries.py; the aggregates were pyarrow compute and Python loops), from a worktree of it:

    git worktree add /tmp/wt-before 70bf5e8
    PYTHONPATH=/tmp/wt-before .venv/bin/python tests/test_queries.py --write

The run is bench/big_run.py's `make_run` of 2,000 rows in shards of 300: six kind/language groups, a regional tag
(pt-BR), answers beyond ASCII, rows with one message, none or null messages, language detection that is wrong,
missing or empty, code tests passed, failed or not run, rows dedup never clustered, rows the judge and the balance
dropped, a student's held-out rows, and a published target holding an earlier run's rows. `fixture` in the golden
says which rows those were: if make_run (or numpy's draws) change, the golden must be made again as above.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import sys
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from huggingface_hub import DatasetCard
from rich.console import Console

from dataengine.facts import RunFacts, collect
from dataengine.generate.top_up import plan_round
from dataengine.publish.stage import Sources, build_layout
from dataengine.recipe import Recipe, parse_recipe, parse_target
from dataengine.report.terminal import show
from dataengine.rows import SAMPLE_FEATURES, write_shards
from dataengine.run_folder import RunFolder

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "data" / "queries_golden.json"
ROWS, SHARD_ROWS = 2000, 300

RECIPE = """
name: big
teacher: {{model: builtin:smollm2-moe}}
generate:
  seed: 7
  chat:
    languages: [{{code: en, quota: 8}}, {{code: fr, quota: 8}}, {{code: pt-BR, quota: 8}}, {{code: zh, quota: 8}}]
    rollouts: 2
  code: {{count: 4, rollouts: 3}}
  top_up: {{rounds: 2, max_factor: 3}}
curate: {{}}
publish:
  to: {target}
  append: true
  configs: [kind, language]
"""


def make(folder: Path) -> Path:
    from bench.big_run import make_run  # from the checkout's root: pytest's rootdir, or put there by --write

    return make_run(folder / "run", ROWS, seed=0, shard_rows=SHARD_ROWS)


# columns the rows gained after the golden was made, empty in the fixture: not part of its digest
LATER_COLUMNS = (
    "turn_finish_reasons",
    "turn_question_finish_reasons",
    "cut_reason",
    "turns_cut",
    "reasoning",
    "reasoning_tokens",
    "reasoning_closed",
    "reference_answer",
    "final_answer",
    "answer_verified",
    "verify_reason",
)


def _fixture(run: Path) -> str:
    """A digest of the rows the renderers read, to tell a changed fixture from a changed number."""
    digest = hashlib.sha256()
    for folder in ("generated", "curated", "rejected", "judged", "balanced"):
        for path in sorted((run / folder / "data").glob("*.parquet")):
            table = pq.read_table(path)
            assert all(table.column(c).null_count == len(table) for c in LATER_COLUMNS if c in table.column_names)
            rows = table.drop_columns([c for c in LATER_COLUMNS if c in table.column_names]).to_pylist()
            digest.update(json.dumps(rows, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _facts(facts: RunFacts) -> dict:
    return {
        "stages": [[s.stage, s.rows_in, s.rows_out, s.seconds] for s in facts.stages],
        "funnel": [[group, list(steps.items())] for group, steps in facts.funnel.items()],
        "funnel_steps": facts.funnel_steps,
        "drops": list(facts.drops.items()),
        "answer_chars": {name: [int(n) for n in lengths] for name, lengths in facts.answer_chars.items()},
        "cluster_sizes": list(facts.cluster_sizes.items()),
        "teacher_quality": facts.teacher_quality,
        "throughput": facts.throughput,
        "tokens_per_second": facts.tokens_per_second,
    }


def _status(facts: RunFacts) -> str:
    """What `dataengine status` prints, its folder written as RUN."""
    out = io.StringIO()
    show(facts, Console(file=out, width=200, color_system=None))
    return out.getvalue().replace(str(facts.run_dir), "RUN")


def _card(recipe: Recipe, run: Path, work: Path) -> dict:
    """The card's statistics and history of an appending publish of the balanced rows to the run's own published
    folder (which holds most of them, and an earlier run's)."""
    target = parse_target(recipe.publish.to, work)
    sources = Sources(RunFolder(run), run / "balanced", run / "students" / "tiny")
    built = build_layout(recipe, recipe.publish, sources, work / "layout", target, work / "cache")
    card = DatasetCard.load(work / "layout" / "README.md")
    data = card.data.to_dict()
    return {
        "counts": built.counts,
        "rows_added": built.rows_added,
        "rows_total": built.rows_total,
        "language": data["language"],
        "size_categories": data["size_categories"],
        "examples": {
            info["config_name"]: {split["name"]: split["num_examples"] for split in info["splits"]}
            for info in data["dataset_info"]
        },
        "revisions": re.search(r"^- revision: (.*)$", card.text, re.M).group(1),
        "history": data["dataengine_runs"],
    }


def measure(run: Path, work: Path) -> dict:
    """Everything the report, `dataengine status`, the card, a top-up round and the run history show of `run`."""
    facts = collect(run)
    recipe = parse_recipe(RECIPE.format(target=run / "published"))
    folder = RunFolder(run)
    generated, curated, judged = (folder.manifest(stage) for stage in ("generate", "curate", "judge"))
    return {
        "fixture": _fixture(run),
        "facts": _facts(facts),
        "status": _status(facts),
        "card": _card(recipe, run, work),
        "top_up": {
            "curated": plan_round(recipe, generated, curated),
            "judged": plan_round(recipe, generated, curated, judged),
        },
    }


def _numbers(text: str) -> list[str]:
    return re.findall(r"\d[\d,.]*", text)


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> tuple[dict, dict]:
    folder = tmp_path_factory.mktemp("queries")
    now = json.loads(json.dumps(measure(make(folder), folder / "work")))  # in JSON's types, as the golden is
    return now, json.loads(GOLDEN.read_text())


def test_the_fixture_is_the_one_the_golden_was_made_from(measured):
    now, golden = measured
    assert now["fixture"] == golden["fixture"], "make_run's rows changed: make the golden again (module docstring)"


def test_the_report_counts_the_rows_as_before(measured):
    now, golden = measured
    quality = now["facts"].pop("teacher_quality")
    assert quality == pytest.approx(golden["facts"].pop("teacher_quality"))
    assert now["facts"] == golden["facts"]


def test_status_shows_the_same_numbers(measured):
    now, golden = measured
    assert _numbers(now["status"]) == _numbers(golden["status"])


def test_the_card_and_the_run_history_count_as_before(measured):
    now, golden = measured
    assert now["card"] == golden["card"]


def test_a_top_up_round_asks_for_as_many_prompts_as_before(measured):
    now, golden = measured
    assert now["top_up"] == golden["top_up"]


# The tests below import what 70bf5e8 had not, in themselves: the module must still import there (--write).


def test_a_folder_of_an_older_run_reads_its_missing_columns_as_null(tmp_path):
    """Rows written before curation added its columns: no clusters found (each its own), no check reached."""
    from dataengine.rows import queries
    from dataengine.rows.frames import scan

    rows = [{"id": f"r{i}", "kind": "chat", "language": "en", "messages": []} for i in range(3)]
    write_shards(rows, tmp_path / "old", features=SAMPLE_FEATURES)
    old = scan(tmp_path / "old")
    assert queries.cluster_sizes(old) == {1: 3}
    assert queries.teacher_quality(old, None) == {"code_pass_rate": None, "language_fidelity": None}
    assert queries.cluster_sizes(None) == {} and len(queries.answer_chars(None)) == 0


def test_a_dataset_with_no_rows_still_has_its_default_config():
    from dataengine.rows import queries

    empty = pl.LazyFrame(schema={"id": pl.String, "kind": pl.String})
    assert queries.split_counts(empty, pl.Series([], dtype=pl.String)) == [(None, 0, 0)]
    assert queries.split_counts(empty, pl.Series([], dtype=pl.String), by="kind") == []


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import tempfile

    sys.path.append(str(ROOT))  # after PYTHONPATH: dataengine is the worktree's, bench/big_run.py this checkout's
    with tempfile.TemporaryDirectory() as tmp:
        numbers = measure(make(Path(tmp)), Path(tmp) / "work")
    text = json.dumps(numbers, indent=1, ensure_ascii=False)
    # a list of scalars on one line (the answer lengths are thousands): only the layout's whitespace holds a newline
    text = re.sub(r"\[([^\[\]{}]*)\]", lambda m: "[" + re.sub(r"\s*\n\s*", " ", m.group(1)).strip() + "]", text)
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(text + "\n")
    print(f"wrote {GOLDEN}")
