"""publish: the curated rows as a Hub dataset (parquet configs and splits + card), to the Hub or a folder.

The stage writes the exact layout into the run's `published/` folder, then sends `README.md` and
`data/**` to the target. `dataengine publish RUN_DIR --to TARGET` runs the same code on a finished run.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from dataengine.errors import StageError, UserError
from dataengine.experts.metrics import js_divergence
from dataengine.facts import Evaluation, Training, collect
from dataengine.manifest import Manifest, fingerprint_files
from dataengine.publish.card import TestSplit, build_card
from dataengine.publish.layout import card_configs, count_layout, write_layout
from dataengine.recipe import PublishConfig, Recipe, Target, parse_target
from dataengine.results import PublishStats
from dataengine.rows import (
    PREFERENCE_FEATURES,
    PUBLISHED_FEATURES,
    held_out_ids,
    ids_key,
    prompt_key,
    shard_files,
)
from dataengine.run_folder import METRICS_FILE, TRAINING_FILE, RunFolder
from dataengine.secrets import known_secrets
from dataengine.stage import RunContext, Stage, StageResult
from dataengine.target import existing
from dataengine.target.existing import Published
from dataengine.target.send import Outcome, published_files, to_folder, to_hub


def _test_share(recipe: Recipe, publish: PublishConfig) -> tuple[float, int]:
    """(share, least rows) of the test split: publish's own, else the student's held-out split."""
    if publish.test_fraction is not None:
        return publish.test_fraction, 1
    if recipe.train is not None:
        return recipe.train.evaluate.eval_fraction, recipe.train.evaluate.min_held_out
    return 0.1, 1


def pick_test_split(
    recipe: Recipe, publish: PublishConfig, student: Path | None, ids: pa.Array
) -> tuple[pa.Array, bool]:
    """(test row ids, whether they are the student's held-out rows), among the rows `ids`. When the run trained a
    student and the recipe sets no test_fraction, the test split is exactly what the student held out (its
    training.json)."""
    if publish.test_fraction is None and recipe.train is not None and student is not None:
        training = Training.read(student / TRAINING_FILE)
        if training is not None:
            return pa.array(training.held_out_ids, pa.string()), True
    return pa.array(list(held_out_ids(ids, *_test_share(recipe, publish))), pa.string()), False


def _load_from(target: Target) -> str:
    # a folder's absolute path means nothing to the card's readers: its name, loaded from its parent
    return target.location if target.kind == "hub" else Path(target.location).name


@dataclass
class Built:
    """A layout written for publishing: rows per config and split, and what this run adds to the target."""

    counts: dict[str, dict[str, int]]
    rows_added: int
    rows_total: int
    unchanged: bool = False  # appending a run whose rows the target already holds: nothing to send

    def stats(self) -> dict:
        return {"counts": self.counts, "rows_added": self.rows_added, "rows_total": self.rows_total}


PREFERENCE = "preference"  # the config of the judge's preference pairs


@dataclass(frozen=True)
class Sources:
    """What a publish reads from its run: the kept rows, and the student's folder and evaluation when the run
    trained one (the test split is what the student held out; the card shows its evaluation)."""

    run: RunFolder
    rows: Path
    student: Path | None = None
    evaluation: Path | None = None
    preference: Path | None = None  # the judge's preference pairs (curate.judge.pairs)


def build_layout(
    recipe: Recipe, publish: PublishConfig, sources: Sources, layout: Path, target: Target, cache: Path
) -> Built:
    """Write data/<config>/<split>-*.parquet and README.md into `layout`. With `publish.append`, the target's
    rows (fetched into `cache` from the Hub) stay, in the split they were published in, and only rows with
    new ids are added."""
    before = existing.read(existing.fetch(target, publish.revision, cache)) if publish.append else Published()
    mine = existing.read_index(shard_files(sources.rows))
    is_new = pc.invert(pc.is_in(mine.column("id"), value_set=before.index.column("id")))
    added = mine.filter(is_new)
    index = pa.concat_tables([before.index, added])  # every row the dataset holds once this run is published
    if not index.num_rows:
        why = sources.run.folder("judge", "rejected") or sources.run.folder("curate", "rejected") or sources.run.path
        raise StageError(f"nothing to publish: 0 rows were kept (see {why} for why)")
    added_ids = added.column("id").combine_chunks()
    new_test_ids, held_out = pick_test_split(recipe, publish, sources.student, added_ids)
    # earlier rows keep their split
    test_ids = pa.concat_arrays([before.test_ids, new_test_ids.filter(pc.is_in(new_test_ids, value_set=added_ids))])
    tested = pc.is_in(mine.column("id"), value_set=test_ids)  # this run's rows, in shard order
    counts = count_layout(index, publish.configs, test_ids)  # before writing: a config name clash is refused
    # An appending publish writes only this run's rows, in shards named after the run and the rows they hold: the
    # target's shards stay as they are, and a second publish of the run (a top-up round's) never writes over its
    # first one's.
    tag = f"{sources.run.run_id}-{ids_key(added_ids)[:8]}-" if publish.append else ""
    rows = _batches(sources.rows, list(PUBLISHED_FEATURES), is_new, tested)
    write_layout(rows, PUBLISHED_FEATURES, layout, publish.configs, publish.max_rows_per_shard, tag)
    config_features = {}
    if sources.preference is not None:
        # a pair is in the test split when a test row answers its prompt: its train split never holds a test prompt
        # (never an appending publish: recipes refuse pairs with publish.append, so every row is this run's)
        test_rows = _batches(sources.rows, ["messages"], tested, tested)
        prompts = {prompt_key(m[:-1]) for batch, _ in test_rows for m in batch.column("messages").to_pylist()}
        pairs = _pairs(sources.preference, prompts)
        written = write_layout(pairs, PREFERENCE_FEATURES, layout, [], publish.max_rows_per_shard, default=PREFERENCE)
        if written:  # a config without rows would not load
            counts[PREFERENCE] = written[PREFERENCE]
            config_features[PREFERENCE] = PREFERENCE_FEATURES
    facts = collect(sources.run.path, rows=False)
    history, seen = run_history(before.history, sources.run, recipe, added.num_rows, index.num_rows, facts.routing)
    earlier = pc.any(pc.invert(pc.is_in(before.index.column("id"), value_set=mine.column("id")))).as_py()
    split = TestSplit(held_out, earlier=bool(earlier))
    evaluation = Evaluation.read(sources.evaluation / METRICS_FILE) if sources.evaluation is not None else None
    card = build_card(
        recipe,
        facts,
        counts,
        card_configs(counts),
        index,
        _load_from(target),
        test_ids,
        split,
        history,
        layout,
        PUBLISHED_FEATURES,
        evaluation,
        secrets=known_secrets(),
        config_features=config_features,
        earlier_sizes=before.sizes,
    )
    card.save(str(layout / "README.md"))
    return Built(counts, added.num_rows, index.num_rows, unchanged=seen and not added.num_rows)


def _pairs(folder: Path, test_prompts: set[str]) -> Iterator[tuple[pa.RecordBatch, pa.Array]]:
    """The preference pairs a batch at a time, each with its test mask: a pair on a prompt of `test_prompts`."""
    for path in shard_files(folder):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            prompts = batch.column("prompt").to_pylist()
            yield batch, pa.array([prompt_key(p) in test_prompts for p in prompts], pa.bool_())


def _batches(
    folder: Path, columns: list[str], keep: pa.ChunkedArray, tested: pa.ChunkedArray
) -> Iterator[tuple[pa.RecordBatch, pa.Array]]:
    """The rows of a stage's shards that `keep` marks, a batch at a time, with their test mask: `keep` and
    `tested` hold a bool per row, in shard order, as `read_index` reads them. Only `columns` the shards have are
    read."""
    if not pc.any(keep).as_py():
        return  # nothing to keep: no shard need be read
    start = 0
    for path in shard_files(folder):
        shard = pq.ParquetFile(path)
        have = [name for name in columns if name in shard.schema_arrow.names]
        for batch in shard.iter_batches(batch_size=1000, columns=have):
            kept = keep.slice(start, batch.num_rows).combine_chunks()
            yield batch.filter(kept), tested.slice(start, batch.num_rows).combine_chunks().filter(kept)
            start += batch.num_rows


def run_history(
    earlier: list[dict], run: RunFolder, recipe: Recipe, added: int, total: int, routing: dict | None = None
) -> tuple[list[dict], bool]:
    """(the card's history with this run, whether it had this run already). A run that publishes again after
    adding rows (a top-up round) updates its own entry rather than adding one. A run that routed its rows
    records its expert load and its drift from the last earlier run that did."""
    info, run_id = run.info, run.run_id
    if not any(entry.get("run_id") == run_id for entry in earlier):
        entry = {
            "run_id": run_id,
            "started": info.get("created_at"),
            "seed": recipe.generate.seed if recipe.generate else None,
            "rows_added": added,
            "rows_total": total,
        }
        if routing is not None:
            entry |= routing_drift(earlier, routing)
        return [*earlier, entry], False
    if not added:
        return earlier, True
    grown = {"rows_total": total}
    if routing is not None:  # a top-up round routed more rows: the entry's load is the run's latest
        grown |= routing_drift([e for e in earlier if e.get("run_id") != run_id], routing)
    return [
        {**e, **grown, "rows_added": e["rows_added"] + added} if e.get("run_id") == run_id else e for e in earlier
    ], True


def routing_drift(earlier: list[dict], routing: dict) -> dict:
    """This run's expert load (layers x experts, 1.0 = uniform) and the mean over layers of the JS divergence
    between it and the last earlier run's that has one (None for the first, or when the shapes differ)."""
    load = [[round(v, 3) for v in layer] for layer in routing["overall"]["load"]]
    last = next((e["expert_load"] for e in reversed(earlier) if e.get("expert_load")), None)
    drift = None
    if last is not None and np.shape(last) == np.shape(load):
        drift = round(float(np.mean(js_divergence(np.array(load), np.array(last)))), 4)
    return {"expert_load": load, "routing_drift": drift}


def publish_layout(layout: Path, publish: PublishConfig, target: Target, built: Built, message: str) -> Outcome:
    """Send the layout, unless the target already holds every row of this run (republishing an appended run
    must change nothing, even when later runs have appended since)."""
    if built.unchanged:
        return Outcome(str(target), changed=False, files=len(published_files(layout)))
    return send(layout, publish, target, message)


def send(layout: Path, publish: PublishConfig, target: Target, message: str) -> Outcome:
    if target.kind == "hub":
        return to_hub(layout, target.location, publish.private, publish.revision, message, publish.append)
    return to_folder(layout, Path(target.location), publish.append)


class PublishStage(Stage):
    name = "publish"
    # route: the card's expert coverage and the history's expert load come from the routing map
    # the card carries the run's name and description, and describes the teacher, generate and curate settings
    reads = ("publish", "name", "description", "teacher", "generate", "curate", "route")

    def __init__(
        self,
        recipe: Recipe,
        base_dir: Path,
        rows_from: str,
        student_from: str | None = None,
        evaluation_from: str | None = None,
        preference_from: str | None = None,
    ) -> None:
        self.recipe = recipe
        if recipe.train is not None:
            # the held-out split's knobs decide the test split when no student's training.json does
            self.reads = (*self.reads, "train.evaluate.eval_fraction", "train.evaluate.min_held_out")
        self.cfg: PublishConfig = recipe.publish
        self.base_dir = base_dir
        # the test split is the student's held-out rows, and the card reports its evaluation, when there is one
        wired = {
            "rows": rows_from,
            "student": student_from,
            "evaluation": evaluation_from,
            "preference": preference_from,
        }
        self.inputs = {role: folder for role, folder in wired.items() if folder is not None}
        self.outputs = {"layout": "published"}

    def outside(self) -> list[str]:
        target = parse_target(self.cfg.to, self.base_dir)
        where = f"hf://datasets/{target.location}" if target.kind == "hub" else target.location
        mode = "appends new rows to what it holds" if self.cfg.append else "replaces what it holds"
        return [f"writes {where}: {mode}"]

    def run(self, inputs: dict[str, Path], outputs: dict[str, Path], work_dir: Path, ctx: RunContext) -> StageResult:
        target = parse_target(self.cfg.to, self.base_dir)
        sources = Sources(
            RunFolder(ctx.run_dir),
            inputs["rows"],
            inputs.get("student"),
            inputs.get("evaluation"),
            inputs.get("preference"),
        )
        output_dir = outputs["layout"]
        # the copy of a Hub target curation fetched, unless the target has moved on since
        built = build_layout(self.recipe, self.cfg, sources, output_dir, target, RunFolder(ctx.run_dir).target_copy)
        rows = built.rows_total
        ctx.log(f"publishing {rows} rows ({built.rows_added} new) in {len(built.counts)} config(s) to {target}")
        message = commit_message(self.recipe.name, ctx.run_id, built)
        outcome = publish_layout(output_dir, self.cfg, target, built, message)
        return StageResult(
            rows_in=rows,
            rows_out=rows,
            output_fingerprint=fingerprint_files(published_files(output_dir)),
            stats=PublishStats(
                **built.stats(),
                target=outcome.target,
                changed=outcome.changed,
                files=outcome.files,
                commit=outcome.commit,
            ),
        )

    def summary(self, manifest: Manifest, outputs: dict[str, Path], console: Console) -> None:
        stats = manifest.stats
        console.print(published_table(stats["counts"]))
        if self.cfg.append:
            console.print(appended_line(stats["rows_added"], stats["rows_total"]))
        console.print(outcome_line(stats["target"], stats["changed"], stats.get("commit")))


def commit_message(name: str, run_id: str, built: Built) -> str:
    return f"dataengine: {name}, run {run_id}, {built.rows_added} new rows, {built.rows_total} in all"


def appended_line(added: int, total: int) -> str:
    return f"appended {added} new rows; {total} rows in all"


def outcome_line(target: str, changed: bool, commit: str | None) -> str:
    what = "published" if changed else "unchanged (same content already there, nothing committed)"
    return f"{target}: {what}" + (f" — {commit}" if commit else "")


def published_table(counts: dict[str, dict[str, int]]) -> Table:
    table = Table(title="published configs", title_justify="left")
    for column in ("config", "train", "test"):
        table.add_column(column, justify="left" if column == "config" else "right")
    for name, splits in counts.items():
        table.add_row(name, str(splits.get("train", 0)), str(splits.get("test", 0)))
    return table


def publish_run(run_dir: Path, to: str, append: bool, dry_run: bool, console: Console) -> Outcome | None:
    """`dataengine publish`: the same layout and card from a finished run's recipe, sent to `to`, replacing
    what it holds or (`append`) adding to it. A dry run leaves the layout in <run>/.work/publish-dry-run/."""
    run = RunFolder(run_dir)
    if not run.recipe.is_file() or run.manifest("curate") is None:
        raise UserError(f"{run_dir} is not a finished curate run (needs {run.recipe.name} and a finished curate stage)")
    # the blocks of the user's own stages are not what a dataset is published with
    saved = json.loads(run.recipe.read_text())
    recipe = Recipe.model_validate({key: value for key, value in saved.items() if key in Recipe.model_fields})
    publish = (recipe.publish or PublishConfig(to=to)).model_copy(update={"to": to, "append": append})
    pairs = run.folder("judge", "preference")
    if append and pairs is not None:
        raise UserError(
            f"{run_dir} has preference pairs ({pairs}); appending them to a published dataset is not supported "
            "yet: publish without --append, to a target of their own"
        )
    target = parse_target(to, Path.cwd())
    work = run.work("publish-dry-run" if dry_run else "publish-command")
    shutil.rmtree(work, ignore_errors=True)
    # the rows the run finally kept: the balanced selection when the recipe balanced them, else what the judge kept
    kept = run.folder("balance") or run.folder("judge") or run.folder("curate")
    sources = Sources(run, kept, run.folder("train"), run.folder("evaluate"), pairs)
    built = build_layout(recipe, publish, sources, work / "layout", target, work / "target")
    console.print(published_table(built.counts))
    if append:
        console.print(appended_line(built.rows_added, built.rows_total))
    if dry_run:
        files = published_files(work / "layout")
        console.print(f"dry run: would send {len(files)} files to {target}; the exact layout is in {work / 'layout'}")
        return None
    try:
        outcome = publish_layout(
            work / "layout", publish, target, built, commit_message(recipe.name, run.run_id, built)
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    console.print(outcome_line(outcome.target, outcome.changed, outcome.commit))
    return outcome
