"""The README and recipe reference stay true, and the docs/ site builds."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from dataengine.reference import render

ROOT = Path(__file__).resolve().parent.parent


def test_recipe_reference_matches_schema():
    assert (ROOT / "docs" / "recipe-reference.md").read_text() == render(), (
        "run: dataengine reference > docs/recipe-reference.md"
    )


def test_every_schema_block_is_documented():
    text = render()
    for block in ("teacher", "teacher.vllm", "teacher.builtin", "generate.chat", "generate.code", "generate.sources[]"):
        assert f"## `{block}`" in text


def test_readme_commands_exist():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    help_text = subprocess.run(
        [sys.executable, "-m", "dataengine.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("validate", "plan", "run", "teacher", "reference"):
        assert f"dataengine {command}" in readme
        assert command in help_text


def test_readme_links_resolve():
    links = re.findall(r"\]\(([^)#\s]+)", (ROOT / "README.md").read_text())
    local = [link for link in links if "://" not in link]
    assert local, "the README links docs/ pages"
    missing = [link for link in local if not (ROOT / link).is_file()]
    assert not missing, f"README links to files that do not exist: {missing}"


def test_docs_site_builds_strict(tmp_path):
    """`mkdocs build --strict` (also in `make test`) fails on a broken link or anchor; the benchmarks page
    includes bench/BENCHMARKS.md instead of copying it. Not --quiet: it stops --strict from counting warnings."""
    mkdocs = Path(sys.executable).parent / "mkdocs"
    site = tmp_path / "site"
    done = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for page in ("index.html", "concepts/index.html", "benchmarks/index.html"):
        assert (site / page).is_file(), page
    assert "Generation throughput" in (site / "benchmarks" / "index.html").read_text()


def test_the_readme_recipe_is_valid(tmp_path):
    """The README's short recipe passes `dataengine validate`'s checks, and its size stays a newcomer's page."""
    from dataengine.pipeline import check_pipeline, load_recipe

    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 12 * 1024
    recipe_text = re.search(r"## A recipe\n\n```yaml\n(.*?)```", readme, re.S).group(1)
    (tmp_path / "my.yaml").write_text(recipe_text)
    recipe = load_recipe(tmp_path / "my.yaml")
    assert check_pipeline(recipe, tmp_path) == []
    assert recipe.pipeline == "distill" and recipe.score is not None
