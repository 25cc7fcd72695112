"""A recipe's own datatrove filters (`curate.filters.custom`): the schema, what `validate` says of a broken entry,
the filter built from its args and carried into worker processes, its module in curation's key, and (slow) a
curation whose custom filter drops rows into rejected/, the manifest, the report and the card."""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from datatrove.data import Document
from rich.console import Console

from dataengine.curate.filters.custom import UserFilter, load_filter, module_file
from dataengine.curate.stage import CurateStage
from dataengine.errors import RecipeError, UserError
from dataengine.recipe import load_recipe, parse_recipe
from tests.conftest import MINIMAL
from tests.planted_corpus import SYLLABLES

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "pipelines" / "examples"
MODULES = ("my_filters", "helpers", "pkg", "pkg.filters")


@pytest.fixture
def folder(tmp_path):
    """A recipe's folder holding the example filter, and no module of it left imported after the test (each
    test's folder has its own my_filters.py)."""
    shutil.copy(EXAMPLES / "my_filters.py", tmp_path / "my_filters.py")
    (tmp_path / "helpers.py").write_text("def not_a_filter(doc):\n    return True\n")
    yield tmp_path
    for name in MODULES:
        sys.modules.pop(name, None)


def recipe_with(entries: str, base_dir: Path | None = None):
    text = MINIMAL + "curate:\n  filters:\n    custom:\n" + textwrap.indent(textwrap.dedent(entries), "      ")
    return parse_recipe(text, base_dir=base_dir)


def problems(entries: str, base_dir: Path) -> list[str]:
    return CurateStage.check(recipe_with(entries, base_dir), base_dir)


# ------------------------------------------------------------------ schema


def test_entry_takes_class_args_and_a_step_name_that_defaults_to_the_class_in_snake_case():
    recipe = recipe_with(
        """\
        - class: my_filters:NoDigits
          args: {max_digits: 3}
        - {class: "pkg.filters:HTTPLinkCheck", name: links}
        - {class: "pkg.filters:HTTPLinkCheck"}
        """
    )
    first, second, third = recipe.curate.filters.custom
    assert (first.class_, first.args, first.step) == ("my_filters:NoDigits", {"max_digits": 3}, "no_digits")
    assert second.step == "links" and third.step == "http_link_check"
    assert parse_recipe(MINIMAL + "curate: {}\n").curate.filters.custom == []
    # the run folder keeps the recipe as JSON, which publish reads back: `class` both ways
    dumped = recipe.model_dump(mode="json")["curate"]["filters"]["custom"][0]
    assert dumped["class"] == "my_filters:NoDigits"
    assert type(recipe).model_validate_json(recipe.model_dump_json()) == recipe


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ("- {class: my_filters.NoDigits}\n", "custom[0].class: must be module:attribute"),
        ("- {class: 'my_filters:NoDigits', name: No-Digits}\n", "custom[0].name: a step name is lowercase"),
        ("- {class: 'my_filters:NoDigits', kwargs: {}}\n", "custom[0].kwargs: unknown key; did you mean 'args'?"),
        ("- {class: 'my_filters:Length'}\n", "custom[0]: step name 'length' is already a shipped step"),
        ("- {class: 'm:F', name: code_tests}\n", "step name 'code_tests' is already a shipped step"),
        ("- {class: 'm:F', name: near_dedup_x}\n", "is already dedup's"),
        ("- {class: 'm:NoDigits'}\n- {class: 'n:NoDigits'}\n", "custom[1]: step name 'no_digits' is already the step"),
    ],
)
def test_schema_problems_name_the_entry(entries, message):
    with pytest.raises(RecipeError) as caught:
        recipe_with(entries)
    assert any(message in p for p in caught.value.problems), caught.value.problems


# ------------------------------------------------------------------ validate (CurateStage.check)


def test_a_good_entry_has_no_problems_and_leaves_sys_path_as_it_was(folder):
    before = list(sys.path)
    assert problems("- {class: 'my_filters:NoDigits', args: {max_digits: 3}}\n", folder) == []
    assert sys.path == before
    assert sys.modules["my_filters"].__file__ == str(folder / "my_filters.py")


def test_a_module_that_cannot_be_imported(folder):
    (folder / "broken.py").write_text("import no_such_dependency_here\n")
    try:
        assert problems("- {class: 'my_filtrs:NoDigits'}\n- {class: 'broken:F'}\n", folder) == [
            "curate.filters.custom[0].class: cannot import 'my_filtrs': No module named 'my_filtrs'",
            "curate.filters.custom[1].class: cannot import 'broken': No module named 'no_such_dependency_here'",
        ]
    finally:
        sys.modules.pop("broken", None)


def test_a_missing_attribute(folder):
    assert problems("- {class: 'my_filters:NoDigit'}\n", folder) == [
        f"curate.filters.custom[0].class: module 'my_filters' ({folder / 'my_filters.py'}) has no attribute "
        "'NoDigit'; did you mean 'NoDigits'?"
    ]


def test_not_a_base_filter(folder):
    assert problems("- {class: 'helpers:not_a_filter'}\n- {class: 'pathlib:Path'}\n", folder) == [
        "curate.filters.custom[0].class: helpers:not_a_filter is not a subclass of datatrove's BaseFilter (a function)",
        "curate.filters.custom[1].class: pathlib:Path is not a subclass of datatrove's BaseFilter (the class Path)",
    ]


def test_args_the_constructor_rejects(folder):
    found = problems(
        """\
        - {class: 'my_filters:NoDigits', args: {max_digit: 3}}
        - {class: 'my_filters:NoDigits', args: {max_digits: -1}, name: negative}
        - {class: 'my_filters:NoDigits', args: {exclusion_writer: x}, name: writer}
        """,
        folder,
    )
    assert found == [
        "curate.filters.custom[0].args: NoDigits(max_digit=3): NoDigits.__init__() got an unexpected keyword "
        "argument 'max_digit'",
        "curate.filters.custom[1].args: NoDigits(max_digits=-1) failed: ValueError: max_digits must be 0 or more, "
        "not -1",
        "curate.filters.custom[2].args: exclusion_writer is dataengine's: the rows a filter drops go to rejected/ "
        "under its name",
    ]


def test_validate_prints_every_problem_with_its_path(folder):
    """What `dataengine validate` shows: each broken entry by its path, exit code 2."""
    text = MINIMAL.replace("name: t", "name: t\npipeline: curate") + textwrap.dedent(
        """\
        curate:
          filters:
            custom:
              - {class: 'my_filtrs:NoDigits'}
              - {class: 'my_filters:NoDigits', args: {max_digit: 3}, name: digits}
        """
    )
    (folder / "recipe.yaml").write_text(text)
    shown = subprocess.run(
        [sys.executable, "-m", "dataengine.cli", "validate", str(folder / "recipe.yaml")],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "250"},
    )
    assert shown.returncode == 2, shown.stdout + shown.stderr
    out = " ".join((shown.stdout + shown.stderr).split())
    assert "- curate.filters.custom[0].class: cannot import 'my_filtrs': No module named 'my_filtrs'" in out
    assert "- curate.filters.custom[1].args: NoDigits(max_digit=3): NoDigits.__init__() got an unexpected" in out


# ------------------------------------------------------------------ the step curation runs


def test_the_filter_is_built_from_args_and_drops_with_its_reason(folder):
    step = UserFilter("my_filters:NoDigits", {"max_digits": 2}, folder, "digits")
    assert step.name == "digits" and step.inner.max_digits == 2
    assert step.filter(Document(text="a 12 b", id="1")) is True
    assert step.filter(Document(text="a 123 b", id="2")) == (False, "too_many_digits")
    assert not any(str(folder) == p for p in sys.path)
    with pytest.raises(UserError, match="custom filter 'digits': args: NoDigits"):
        UserFilter("my_filters:NoDigits", {"max_digit": 2}, folder, "digits")


def test_the_step_pickles_into_a_process_that_cannot_import_the_module_itself(folder, tmp_path_factory):
    """Datatrove's workers (a forkserver's children, Ray, Slurm) unpickle the pipeline where the recipe's folder is
    not on sys.path: the step carries the entry, not the user's object, and builds it again there."""
    step = UserFilter("my_filters:NoDigits", {"max_digits": 2}, folder, "digits")
    pickled = tmp_path_factory.mktemp("elsewhere") / "step.pickle"
    pickled.write_bytes(pickle.dumps(step))
    script = (
        "import pickle, sys\n"
        "from datatrove.data import Document\n"
        f"assert {str(folder)!r} not in sys.path\n"
        "try:\n"
        "    import my_filters\n"
        "    raise SystemExit('my_filters importable without the recipe folder: the test proves nothing')\n"
        "except ImportError:\n"
        "    pass\n"
        f"step = pickle.loads(open({str(pickled)!r}, 'rb').read())\n"
        "docs = [Document(text=t, id=str(i)) for i, t in enumerate(['a 1', 'b 123', 'c'])]\n"
        "print([d.id for d in step.run(iter(docs))], step.stats.name, step.stats['dropped'].total)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=pickled.parent, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["['0',", "'2']", "🔻", "-", "FILTER:", "digits", "1"]


def test_the_module_file_under_the_recipe_folder_is_part_of_the_key(folder):
    (folder / "pkg").mkdir()
    (folder / "pkg" / "__init__.py").write_text("")
    (folder / "pkg" / "filters.py").write_text("from my_filters import NoDigits as Other\n")
    recipe = recipe_with(
        """\
        - {class: 'my_filters:NoDigits'}
        - {class: 'pkg.filters:Other'}
        - {class: 'datatrove.pipeline.filters:LambdaFilter', args: {filter_function: null}}
        """,
        folder,
    )
    files = CurateStage(recipe, folder, rows_from="generated").key_files()
    assert folder / "my_filters.py" in files and folder / "pkg" / "filters.py" in files
    assert not [p for p in files if "datatrove" in str(p)]  # a filter of the environment is its version's
    assert module_file("no_such_module:F", folder) is None
    assert "my_filters" not in sys.modules  # found without importing


def test_the_example_recipe_is_valid_and_keys_its_filter():
    recipe = load_recipe(EXAMPLES / "custom_filter.yaml")
    try:
        assert CurateStage.check(recipe, EXAMPLES) == []
        assert load_filter("my_filters:NoDigits", {"max_digits": 3}, EXAMPLES).max_digits == 3
    finally:
        sys.modules.pop("my_filters", None)
    assert recipe.curate.filters.custom[0].step == "no_digits"
    assert EXAMPLES / "my_filters.py" in CurateStage(recipe, EXAMPLES, rows_from="generated").key_files()


# ------------------------------------------------------------------ end to end (slow)

RECIPE = """
name: digits
pipeline: curate
teacher: {model: "builtin:smollm2-moe"}
generate:
  chat: {languages: [{code: en, quota: 12}]}
curate:
  tasks: 2
  workers: 2
  filters:
    reasoning: {enabled: false}
    math: {enabled: false}
    truncated: {enabled: false}
    length: {enabled: false}
    refusal: {enabled: false}
    question: {enabled: false}
    repetition: {enabled: false}
    language: {enabled: false}
    prose_quality: {enabled: false}
    custom:
      - class: my_filters:NoDigits
        args: {max_digits: 3}
        name: digit_heavy
  code: {enabled: false}
  decontamination: {enabled: false}
publish:
  to: published
"""


def _rows(n: int, digits: set[int]) -> list[dict]:
    """Answers that differ in words (dedup normalises digits away); those in `digits` carry a phone number."""
    rng = random.Random(0)
    vocab = sorted({"".join(rng.choice(SYLLABLES) for _ in range(rng.randint(3, 5))) for _ in range(4000)})
    rows = []
    for i in range(n):
        answer = " ".join(rng.choice(vocab) for _ in range(60)) + (" call 555 0100" if i in digits else "")
        rows.append(
            {
                "id": f"r{i}",
                "kind": "chat",
                "language": "en",
                "seed": i,
                "teacher_model": "builtin:smollm2-moe",
                "messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": answer}],
            }
        )
    return rows


@pytest.mark.slow
def test_a_custom_filter_drops_rows_into_rejected_the_manifest_the_report_and_the_card(folder):
    """Curation (and publish, for the card) for real on generated rows written here: no teacher. Two datatrove
    workers: the filter from the recipe's folder runs in processes that could not import it on their own."""
    from dataengine.facts import collect
    from dataengine.manifest import Manifest
    from dataengine.report.terminal import show
    from dataengine.rows import SAMPLE_FEATURES, read_rows, write_shards
    from dataengine.runner import run_recipe

    (folder / "digits.yaml").write_text(RECIPE)
    recipe = load_recipe(folder / "digits.yaml")
    run_dir = folder / "run"
    heavy = {1, 4, 7, 10}
    rows = _rows(12, heavy)
    write_shards(rows, run_dir / "generated", features=SAMPLE_FEATURES)
    Manifest("generate", "g", "", "gen-1", None, len(rows), {}, {}, {}, "digits-1", "r", {}).write(
        run_dir / "generated"
    )
    (run_dir / "run.json").write_text(json.dumps({"run_id": "digits-1", "created_at": "2026-12-01T00:00"}))
    console = Console(record=True, width=200)
    manifests = run_recipe(recipe, folder, run_dir=run_dir, only=["curate", "publish"], console=console)

    curated = manifests["curate"]
    kept, rejected = read_rows(run_dir / "curated"), read_rows(run_dir / "rejected")
    assert curated.rows_in == len(rows) == len(kept) + len(rejected)
    assert {r["id"] for r in rejected} == {f"r{i}" for i in heavy}
    assert {(r["drop_step"], r["drop_reason"]) for r in rejected} == {("digit_heavy", "too_many_digits")}
    assert curated.drops == {"too_many_digits": len(heavy)}
    assert curated.stats["rejected_by_step"] == {"digit_heavy": len(heavy)}
    shown = console.export_text()
    assert "filters: digit_heavy" in shown and f"dropped: too_many_digits {len(heavy)}" in shown

    facts = collect(run_dir)
    assert facts.drops == {"too_many_digits": len(heavy)}
    report = Console(record=True, width=200)
    show(facts, report)
    assert "too_many_digits" in report.export_text()
    card = (folder / "published" / "README.md").read_text()
    assert f"| too_many_digits | {len(heavy)} |" in card
    assert "- class: my_filters:NoDigits" in card  # the recipe as written, `class` and not `class_`

    # the filter's file is part of curation's key: editing it reruns curation, leaving it does not
    again = Console(record=True, width=200)
    run_recipe(recipe, folder, run_dir=run_dir, only=["curate"], console=again)
    assert "already done" in again.export_text()
    (folder / "my_filters.py").write_text((folder / "my_filters.py").read_text() + "\n# edited\n")
    edited = Console(record=True, width=200)
    run_recipe(recipe, folder, run_dir=run_dir, only=["curate"], console=edited)
    assert "already done" not in edited.export_text()
