"""Runs a pipeline's stages in order, skipping finished ones and resuming interrupted ones.

Layout of a run folder:
    <run>/run.json          run id, recipe hash, when it was created
    <run>/recipe.json       the validated recipe (what every stage was configured with), secrets removed
    <run>/<stage output>/   parquet shards + manifest.json, one folder per stage
    <run>/.work/<stage>/    the stage's resumable state (checkpoints, request cache, logs)
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, Protocol

from rich.console import Console

from dataengine.errors import UserError
from dataengine.generate.top_up import add_round
from dataengine.manifest import Manifest, tool_versions
from dataengine.recipe import Recipe, resolve_path
from dataengine.secrets import scrub_known
from dataengine.teacher.server import TeacherEndpoint


@dataclass
class StageResult:
    rows_in: int | None
    rows_out: int
    output_fingerprint: str
    drops: dict[str, int] = field(default_factory=dict)
    stats: dict = field(default_factory=dict)


class Stage(Protocol):
    name: str
    output: str  # folder name under the run folder
    inputs: tuple[str, ...]  # names of the stages whose output it reads

    def config_hash(self) -> str: ...

    def state(self, run_dir: Path) -> str:
        """What else, outside the recipe, the stage's output depends on (e.g. top-up rounds); "" if nothing."""
        ...

    def run(self, ctx: RunContext, output_dir: Path, work_dir: Path) -> StageResult: ...

    def summary(self, manifest: Manifest, output_dir: Path, console: Console) -> None: ...


@dataclass
class RunContext:
    recipe: Recipe
    base_dir: Path  # folder of the recipe file: relative paths in it start there
    run_dir: Path
    console: Console
    run_id: str
    teacher: TeacherEndpoint

    def log(self, message: str) -> None:
        self.console.print(f"[dim]{message}[/dim]")


StageStatus = Literal["done", "pending", "stale", "blocked"]


def default_run_dir(recipe: Recipe, base_dir: Path) -> Path:
    """`output_dir` from the recipe (relative to the recipe's folder), else runs/<name> in the working directory."""
    return resolve_path(recipe.output_dir, base_dir) if recipe.output_dir else (Path.cwd() / "runs" / recipe.name)


def build_stages(recipe: Recipe, base_dir: Path) -> list[Stage]:
    import importlib

    module = importlib.import_module(f"pipelines.{recipe.pipeline}")
    return module.build(recipe, base_dir)


def _input_fingerprint(stage: Stage, run_dir: Path, by_name: dict[str, Stage]) -> str | None:
    """What the output depends on besides the config: the stage's own state (top-up rounds) and its
    inputs' outputs; None while an input is not done."""
    inputs = _inputs(stage, run_dir, by_name)
    if inputs is None:
        return None
    return ",".join(([f"state:{state}"] if (state := stage.state(run_dir)) else []) + ([inputs] if inputs else []))


def _inputs(stage: Stage, run_dir: Path, by_name: dict[str, Stage]) -> str | None:
    """Fingerprints of the input stages' outputs, or None while an input is not done."""
    parts = []
    for name in stage.inputs:
        manifest = Manifest.read(run_dir / by_name[name].output)
        if manifest is None:
            return None
        parts.append(f"{name}:{manifest.output_fingerprint}")
    return ",".join(parts)


def stage_status(stage: Stage, run_dir: Path, by_name: dict[str, Stage]) -> StageStatus:
    inputs = _input_fingerprint(stage, run_dir, by_name)
    if inputs is None:
        return "blocked"
    manifest = Manifest.read(run_dir / stage.output)
    if manifest is None:
        return "pending"
    if manifest.config_hash != stage.config_hash() or manifest.input_fingerprint != inputs:
        return "stale"
    return "done"


def plan(recipe: Recipe, base_dir: Path, run_dir: Path) -> list[tuple[Stage, StageStatus]]:
    stages = build_stages(recipe, base_dir)
    by_name = {s.name: s for s in stages}
    out = []
    for stage in stages:
        status = stage_status(stage, run_dir, by_name)
        # a stage after one that will run is pending on it, whatever its manifest says today
        if any(st != "done" for _, st in out) and status == "done":
            status = "stale"
        out.append((stage, status))
    return out


def _run_info(run_dir: Path, recipe: Recipe) -> str:
    """The run id is made once, when the run folder is first used, and kept across resumes."""
    path = run_dir / "run.json"
    if path.is_file():
        return json.loads(path.read_text())["run_id"]
    run_id = f"{recipe.name}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    info = {"run_id": run_id, "recipe": recipe.name, "created_at": datetime.now(UTC).isoformat()}
    path.write_text(json.dumps(info, indent=2))
    return run_id


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
    stages = build_stages(recipe, base_dir)
    by_name = {s.name: s for s in stages}
    for name in (only or []) + (force or []):
        if name not in by_name:
            raise UserError(f"no stage {name!r} in pipeline {recipe.pipeline!r} (stages: {', '.join(by_name)})")
    if recipe.teacher.is_builtin:
        from dataengine.teacher.builtin import weights_problem

        # before any stage: an air-gapped node learns this at once, not after generation was queued
        if problem := weights_problem(recipe.teacher.model.split(":", 1)[1], recipe.teacher.builtin):
            raise UserError(problem)
    run_dir.mkdir(parents=True, exist_ok=True)
    # secrets removed: the run folder is meant to be shared (and is what `dataengine publish` reads)
    (run_dir / "recipe.json").write_text(json.dumps(scrub_known(recipe.model_dump(mode="json")), indent=2))
    run_id = _run_info(run_dir, recipe)
    teacher = TeacherEndpoint(recipe.teacher, run_dir / ".work" / "teacher-server.log", log=console.print)
    ctx = RunContext(recipe, base_dir, run_dir, console, run_id, teacher)
    try:
        manifests = _run_stages(stages, ctx, by_name, only, force)
        # curation fell short of the recipe's targets: more prompts there, then the stages again
        while not only and (extra := add_round(recipe, run_dir, manifests)) is not None:
            console.rule("[bold]top-up")
            console.print(f"asking for more prompts where curation fell short: {extra}")
            manifests = _run_stages(stages, ctx, by_name, None, None)
    finally:
        teacher.close()
        _write_report(run_dir, console)  # a failed run gets one too: it shows how far things got
    return manifests


def _write_report(run_dir: Path, console: Console) -> None:
    from dataengine.report.page import write_report

    try:
        console.print(f"report: {write_report(run_dir)}")
    except Exception as exc:  # the run's data is written either way; a report that cannot be drawn must not fail it
        console.print(f"[yellow]warning:[/yellow] report.html not written: {exc!r}")


def _run_stages(stages: list[Stage], ctx: RunContext, by_name: dict[str, Stage], only: list[str] | None,
                force: list[str] | None) -> dict[str, Manifest]:  # fmt: skip
    manifests: dict[str, Manifest] = {}
    for stage in stages:
        if only and stage.name not in only:
            if (m := Manifest.read(ctx.run_dir / stage.output)) is not None:
                manifests[stage.name] = m
            continue
        manifests[stage.name] = _run_stage(stage, ctx, by_name, forced=stage.name in (force or []))
    return manifests


def _run_stage(stage: Stage, ctx: RunContext, by_name: dict[str, Stage], forced: bool) -> Manifest:
    output_dir = ctx.run_dir / stage.output
    inputs = _input_fingerprint(stage, ctx.run_dir, by_name)
    if inputs is None:
        missing = [n for n in stage.inputs if Manifest.read(ctx.run_dir / by_name[n].output) is None]
        raise UserError(f"stage {stage.name!r} needs {', '.join(missing)} to finish first (run without --stage)")
    status = stage_status(stage, ctx.run_dir, by_name)
    if status == "done" and not forced:
        manifest = Manifest.read(output_dir)
        ctx.console.print(f"[green]✓[/green] {stage.name}: already done ({manifest.rows_out} rows) — skipped")
        stage.summary(manifest, output_dir, ctx.console)
        return manifest
    ctx.console.rule(f"[bold]{stage.name}")
    work_dir = ctx.run_dir / ".work" / stage.name
    config_hash = stage.config_hash()
    _prepare_work_dir(work_dir, f"{config_hash}|{_inputs(stage, ctx.run_dir, by_name)}", fresh=forced)
    # the old output is removed before the run: a folder without a manifest is never mistaken for done
    shutil.rmtree(output_dir, ignore_errors=True)
    output_dir.mkdir(parents=True)
    started = time.time()
    result = stage.run(ctx, output_dir, work_dir)
    manifest = Manifest(
        stage=stage.name,
        config_hash=config_hash,
        input_fingerprint=inputs,
        output_fingerprint=result.output_fingerprint,
        rows_in=result.rows_in,
        rows_out=result.rows_out,
        drops=result.drops,
        stats=result.stats,
        timings={"started": started, "seconds": round(time.time() - started, 3)},
        run_id=ctx.run_id,
        recipe_hash=ctx.recipe.fingerprint(),
        versions=tool_versions(),
    )
    manifest.write(output_dir)
    stage.summary(manifest, output_dir, ctx.console)
    return manifest


def describe_plan(rows: list[tuple[Stage, StageStatus]], run_dir: Path, print_fn: Callable[..., None]) -> None:
    labels = {"done": "done (will be skipped)", "pending": "will run", "stale": "will run (config or input changed)",
              "blocked": "will run after its inputs"}  # fmt: skip
    for stage, status in rows:
        print_fn(f"  {stage.name:<10} -> {run_dir / stage.output}  ({labels[status]})")
