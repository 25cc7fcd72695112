"""Runs a pipeline's stages in order, skipping finished ones and resuming interrupted ones.

The runner resolves each stage's declared inputs and outputs to folders of the run (see run_folder.py),
decides from the manifests what is done, and hands each stage its folders: `run(inputs, outputs, work, ctx)`.
It knows no stage by name.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from rich.console import Console

from dataengine import hardware
from dataengine.atomic import write_atomic
from dataengine.errors import RecipeError, UserError
from dataengine.logs import libraries_to
from dataengine.manifest import Manifest, tool_versions
from dataengine.pipeline import Pipeline, build_pipeline, check_pipeline
from dataengine.recipe import Recipe, resolve_path
from dataengine.results import StageStats
from dataengine.run_folder import RunFolder
from dataengine.secrets import scrub_known
from dataengine.stage import RunContext, Stage, config_hash
from dataengine.teacher.server import teacher_pool

StageStatus = Literal["done", "pending", "stale", "blocked"]


def default_run_dir(recipe: Recipe, base_dir: Path) -> Path:
    """`output_dir` from the recipe (relative to the recipe's folder), else runs/<name> in the working directory."""
    return resolve_path(recipe.output_dir, base_dir) if recipe.output_dir else (Path.cwd() / "runs" / recipe.name)


class _Wiring:
    """Which stage writes each folder of the run, and the manifests that say what is done."""

    def __init__(self, stages: list[Stage], run_dir: Path) -> None:
        self.run_dir = run_dir
        self.producer: dict[str, Stage] = {}
        for stage in stages:
            for role, folder in stage.inputs.items():
                if folder not in self.producer:
                    raise ValueError(f"stage {stage.name!r} reads {folder!r} ({role}), which no stage before it writes")
            self.producer |= {folder: stage for folder in stage.outputs.values()}

    def folders(self, mapping: dict[str, str]) -> dict[str, Path]:
        return {role: self.run_dir / folder for role, folder in mapping.items()}

    def manifest(self, stage: Stage) -> Manifest | None:
        return Manifest.read(self.run_dir / next(iter(stage.outputs.values())))

    def inputs_key(self, stage: Stage) -> str | None:
        """Fingerprints of the stages whose outputs it reads, or None while one of them is not done."""
        parts = []
        for producer in dict.fromkeys(self.producer[f] for f in stage.inputs.values()):
            manifest = self.manifest(producer)
            if manifest is None:
                return None
            parts.append(f"{producer.name}:{manifest.output_fingerprint}")
        return ",".join(parts)

    def input_fingerprint(self, stage: Stage) -> str | None:
        """What the output depends on besides the config: the stage's own state (top-up rounds) and its
        inputs' outputs; None while an input is not done."""
        inputs = self.inputs_key(stage)
        if inputs is None:
            return None
        state = stage.state(self.run_dir)
        return ",".join(([f"state:{state}"] if state else []) + ([inputs] if inputs else []))

    def status(self, stage: Stage, recipe: Recipe) -> StageStatus:
        inputs = self.input_fingerprint(stage)
        if inputs is None:
            return "blocked"
        manifest = self.manifest(stage)
        if manifest is None:
            return "pending"
        # an output gone since (deleted, or one the stage gained in a later version of it) is written again
        if not all((self.run_dir / folder).is_dir() for folder in stage.outputs.values()):
            return "stale"
        if manifest.config_hash != config_hash(stage, recipe) or manifest.input_fingerprint != inputs:
            return "stale"
        return "done"


def plan(recipe: Recipe, base_dir: Path, run_dir: Path) -> list[tuple[Stage, StageStatus]]:
    stages = build_pipeline(recipe, base_dir).stages
    wiring = _Wiring(stages, run_dir)
    out: list[tuple[Stage, StageStatus]] = []
    for stage in stages:
        status = wiring.status(stage, recipe)
        # a stage after one that will run is pending on it, whatever its manifest says today
        if any(st != "done" for _, st in out) and status == "done":
            status = "stale"
        out.append((stage, status))
    return out


def check(recipe: Recipe, base_dir: Path, source: str) -> None:
    """Everything `validate` checks beyond the schema; RecipeError listing each problem."""
    if problems := check_pipeline(recipe, base_dir):
        raise RecipeError(source, problems)


def _prepare_work_dir(work_dir: Path, key: str, fresh: bool) -> None:
    """Resumable state belongs to one config and one input: a change there (or --force) starts from
    scratch. The stage's own state (top-up rounds) is not part of the key: its work is added to."""
    marker = work_dir / "work_key"
    if fresh or (work_dir.exists() and (not marker.is_file() or marker.read_text() != key)):
        shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(key)


def run_recipe(
    recipe: Recipe,
    base_dir: Path,
    run_dir: Path | None = None,
    only: list[str] | None = None,
    force: list[str] | None = None,
    console: Console | None = None,
) -> dict[str, Manifest]:
    """Run the recipe's pipeline; returns each stage's manifest (run now or found done)."""
    console = console or Console()
    run_dir = run_dir or default_run_dir(recipe, base_dir)
    # before any stage: an air-gapped node learns of missing weights at once, not after generation was queued
    check(recipe, base_dir, f"recipe {recipe.name!r}")
    pipeline = build_pipeline(recipe, base_dir)
    names = [s.name for s in pipeline.stages]
    for name in (only or []) + (force or []):
        if name not in names:
            raise UserError(f"no stage {name!r} in pipeline {recipe.pipeline!r} (stages: {', '.join(names)})")
    run = RunFolder(run_dir)
    run_id = run.start(recipe.name, {s.name: dict(s.outputs) for s in pipeline.stages})
    # secrets removed: the run folder is meant to be shared (and is what `dataengine publish` reads)
    write_atomic(run.recipe, json.dumps(scrub_known(recipe.model_dump(mode="json")), indent=2))
    if not recipe.teacher.urls:  # the engine starts the teacher: say what it picked for this machine, and why
        for line in hardware.describe(recipe.teacher.vllm.dtype, recipe.teacher.vllm.env, recipe.teacher.vllm.ranks):
            console.print(f"[dim]{line}[/dim]")
    teachers = teacher_pool(recipe.teacher, run.teacher_log, log=console.print)
    teacher = teachers[0]  # the one that may be our own server; the others are the recipe's endpoints
    ctx = RunContext(recipe, base_dir, run_dir, console, run_id, teacher, teachers)
    with libraries_to(run.library_log):
        try:
            return _run_rounds(pipeline, ctx, only, force)
        finally:
            teacher.close()
            _write_report(run_dir, console)  # a failed run gets one too: it shows how far things got


def _run_rounds(
    pipeline: Pipeline, ctx: RunContext, only: list[str] | None, force: list[str] | None
) -> dict[str, Manifest]:
    """The stages up to `pipeline.round_after` as many rounds as `next_round` asks for, then the rest once."""
    names = [s.name for s in pipeline.stages]
    cut = names.index(pipeline.round_after) + 1 if pipeline.round_after else len(names)
    manifests = _run_stages(pipeline, pipeline.stages[:cut], ctx, only, force)
    while not only and pipeline.next_round and (message := pipeline.next_round(ctx.run_dir, manifests)):
        ctx.console.rule("[bold]top-up")
        ctx.console.print(message)
        manifests = _run_stages(pipeline, pipeline.stages[:cut], ctx, None, None)
    return manifests | _run_stages(pipeline, pipeline.stages[cut:], ctx, only, force)


def _write_report(run_dir: Path, console: Console) -> None:
    from dataengine.report.page import write_report

    try:
        console.print(f"report: {write_report(run_dir)}")
    except Exception as exc:  # the run's data is written either way; a report that cannot be drawn must not fail it
        console.print(f"[yellow]warning:[/yellow] report.html not written: {exc!r}")


def _run_stages(
    pipeline: Pipeline, stages: list[Stage], ctx: RunContext, only: list[str] | None, force: list[str] | None
) -> dict[str, Manifest]:
    """Run `stages`, a stretch of the pipeline's, in order (those done are found done)."""
    wiring = _Wiring(pipeline.stages, ctx.run_dir)
    manifests: dict[str, Manifest] = {}
    for stage in stages:
        if only and stage.name not in only:
            if (m := wiring.manifest(stage)) is not None:
                manifests[stage.name] = m
            continue
        manifests[stage.name] = _run_stage(stage, ctx, wiring, forced=stage.name in (force or []))
    return manifests


def _run_stage(stage: Stage, ctx: RunContext, wiring: _Wiring, forced: bool) -> Manifest:
    outputs = wiring.folders(dict(stage.outputs))
    inputs = wiring.input_fingerprint(stage)
    if inputs is None:
        missing = [
            wiring.producer[f].name for f in stage.inputs.values() if wiring.manifest(wiring.producer[f]) is None
        ]
        missing = list(dict.fromkeys(missing))
        raise UserError(f"stage {stage.name!r} needs {', '.join(missing)} to finish first (run without --stage)")
    if wiring.status(stage, ctx.recipe) == "done" and not forced:
        manifest = wiring.manifest(stage)
        ctx.console.print(f"[green]✓[/green] {stage.name}: already done ({manifest.rows_out} rows) — skipped")
        stage.summary(manifest, outputs, ctx.console)
        return manifest
    ctx.console.rule(f"[bold]{stage.name}")
    work_dir = RunFolder(ctx.run_dir).work(stage.name)
    key = config_hash(stage, ctx.recipe)
    _prepare_work_dir(work_dir, f"{key}|{wiring.inputs_key(stage)}", fresh=forced)
    # every output is emptied before the run: a folder without a manifest is never mistaken for done,
    # and no file of an earlier run survives in a folder the stage writes
    for folder in outputs.values():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    started = time.time()
    result = stage.run(wiring.folders(dict(stage.inputs)), outputs, work_dir, ctx)
    manifest = Manifest(
        stage=stage.name,
        config_hash=key,
        input_fingerprint=inputs,
        output_fingerprint=result.output_fingerprint,
        rows_in=result.rows_in,
        rows_out=result.rows_out,
        drops=result.drops,
        stats=result.stats.model_dump(mode="json") if isinstance(result.stats, StageStats) else result.stats,
        timings={"started": started, "seconds": round(time.time() - started, 3)},
        run_id=ctx.run_id,
        recipe_hash=ctx.recipe.fingerprint(),
        versions=tool_versions(),
    )
    manifest.write(next(iter(outputs.values())))
    stage.summary(manifest, outputs, ctx.console)
    return manifest


def describe_plan(rows: list[tuple[Stage, StageStatus]], run_dir: Path, print_fn: Callable[..., None]) -> None:
    labels = {
        "done": "done (will be skipped)",
        "pending": "will run",
        "stale": "will run (config or input changed)",
        "blocked": "will run after its inputs",
    }
    width = max((len(stage.name) for stage, _ in rows), default=0)
    for stage, status in rows:
        print_fn(f"  {stage.name:<{width}} -> {run_dir / next(iter(stage.outputs.values()))}  ({labels[status]})")
        for line in stage.outside():
            print_fn(f"  {'':<{width}}    {line}")
