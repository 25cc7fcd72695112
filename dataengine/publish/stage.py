"""publish: the curated rows as a Hub dataset (parquet configs and splits + card), to the Hub or a folder.

The stage writes the exact layout into the run's `published/` folder, then sends `README.md` and
`data/**` to the target. `dataengine publish RUN_DIR --to TARGET` runs the same code on a finished run.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dataengine.errors import UserError
from dataengine.manifest import Manifest, fingerprint_files
from dataengine.publish.card import build_card
from dataengine.publish.layout import DEFAULT, card_configs, write_layout
from dataengine.publish.target import Outcome, Target, parse_target, published_files, to_folder, to_hub
from dataengine.recipe import PublishConfig, Recipe
from dataengine.runner import RunContext, StageResult
from dataengine.sample import CURATED_FEATURES
from dataengine.secrets import hub_token
from dataengine.train.data import read_rows, split_rows

# Kept rows have no drop reason: those columns only mean something in rejected/
FEATURES = CURATED_FEATURES.copy()
for _column in ("drop_reason", "drop_step"):
    del FEATURES[_column]


def test_fraction(recipe: Recipe, publish: PublishConfig) -> float:
    if publish.test_fraction is not None:
        return publish.test_fraction
    return recipe.train.evaluate.eval_fraction if recipe.train is not None else 0.1


def build_layout(recipe: Recipe, publish: PublishConfig, run_dir: Path, layout: Path, target: Target) -> dict:
    """Write data/<config>/<split>-*.parquet and README.md into `layout`; rows per config and split."""
    rows = read_rows(run_dir / "curated")
    fraction = test_fraction(recipe, publish)
    counts = write_layout(rows, FEATURES, layout, publish.configs, fraction, publish.max_rows_per_shard)
    test_ids = {r["id"] for r in split_rows(rows, fraction)[1]}
    card = build_card(recipe, run_dir, counts, card_configs(counts), rows, target.location, test_ids,
                      secrets=tuple(t for t in (hub_token(),) if t))  # fmt: skip
    card.save(str(layout / "README.md"))
    return counts


def send(layout: Path, publish: PublishConfig, target: Target, message: str) -> Outcome:
    if target.kind == "hub":
        return to_hub(layout, target.location, publish.private, publish.revision, message)
    return to_folder(layout, Path(target.location))


class PublishStage:
    name = "publish"
    output = "published"

    def __init__(self, recipe: Recipe, base_dir: Path) -> None:
        self.recipe = recipe
        self.cfg: PublishConfig = recipe.publish
        self.base_dir = base_dir
        # the card reports the student's evaluation when the pipeline trains one
        self.inputs = ("curate", "evaluate") if recipe.train is not None else ("curate",)

    def config_hash(self) -> str:
        return self.recipe.fingerprint("publish", "teacher", "generate", "curate")

    def state(self, run_dir: Path) -> str:
        return ""

    def run(self, ctx: RunContext, output_dir: Path, work_dir: Path) -> StageResult:
        target = parse_target(self.cfg.to, self.base_dir)
        counts = build_layout(self.recipe, self.cfg, ctx.run_dir, output_dir, target)
        rows = sum(counts[DEFAULT].values())
        ctx.log(f"publishing {rows} rows in {len(counts)} config(s) to {target}")
        outcome = send(output_dir, self.cfg, target, f"dataengine: {self.recipe.name}, run {ctx.run_id}, {rows} rows")
        return StageResult(
            rows_in=rows,
            rows_out=rows,
            output_fingerprint=fingerprint_files(published_files(output_dir)),
            stats={
                "counts": counts,
                "target": outcome.target,
                "changed": outcome.changed,
                "files": outcome.files,
                "commit": outcome.commit,
            },  # fmt: skip
        )

    def summary(self, manifest: Manifest, output_dir: Path, console: Console) -> None:
        console.print(published_table(manifest.stats["counts"]))
        stats = manifest.stats
        what = "published" if stats["changed"] else "unchanged (same content already there, nothing committed)"
        console.print(f"{stats['target']}: {what}" + (f" — {stats['commit']}" if stats.get("commit") else ""))


def published_table(counts: dict[str, dict[str, int]]) -> Table:
    table = Table(title="published configs", title_justify="left")
    for column in ("config", "train", "test"):
        table.add_column(column, justify="left" if column == "config" else "right")
    for name, splits in counts.items():
        table.add_row(name, str(splits.get("train", 0)), str(splits.get("test", 0)))
    return table


def publish_run(run_dir: Path, to: str, dry_run: bool, console: Console) -> Outcome | None:
    """`dataengine publish`: the same layout and card from a finished run's recipe, sent to `to`."""
    recipe_file = run_dir / "recipe.json"
    if not recipe_file.is_file() or Manifest.read(run_dir / "curated") is None:
        raise UserError(f"{run_dir} is not a finished curate run (needs recipe.json and curated/manifest.json)")
    recipe = Recipe.model_validate_json(recipe_file.read_text())
    publish = (recipe.publish or PublishConfig(to=to)).model_copy(update={"to": to})
    target = parse_target(to, Path.cwd())
    layout = Path(tempfile.mkdtemp(prefix="dataengine-publish-"))
    counts = build_layout(recipe, publish, run_dir, layout, target)
    console.print(published_table(counts))
    if dry_run:
        files = published_files(layout)
        console.print(f"dry run: would send {len(files)} files to {target}; the exact layout is in {layout}")
        return None
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    rows = sum(counts[DEFAULT].values())
    outcome = send(layout, publish, target, f"dataengine: {recipe.name}, run {run_id}, {rows} rows")
    what = "published" if outcome.changed else "unchanged (same content already there, nothing committed)"
    console.print(f"{outcome.target}: {what}" + (f" — {outcome.commit}" if outcome.commit else ""))
    return outcome
