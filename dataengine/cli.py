"""`dataengine`: run, validate and plan recipes; build and serve the teacher."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from dataengine.errors import StageError, UserError
from dataengine.recipe import Recipe, load_recipe

app = typer.Typer(
    help="Synthetic data engine for MoE fine-tuning: a vLLM-served teacher writes multilingual and code "
    "samples that are curated and distilled into small students, all from one recipe YAML.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
teacher_app = typer.Typer(help="Build and serve the recipe's teacher.", no_args_is_help=True)
app.add_typer(teacher_app, name="teacher")

console = Console()
err = Console(stderr=True)

RecipeArg = Annotated[Path, typer.Argument(help="recipe YAML file", show_default=False)]
OutputOpt = Annotated[
    Path | None, typer.Option("--output", "-o", help="run folder (default: runs/<name> in the working directory)")
]


def _load(path: Path) -> tuple[Recipe, Path]:
    return load_recipe(path), path.parent.resolve()


@app.command()
def validate(recipe: RecipeArg) -> None:
    """Check a recipe: YAML syntax, keys, types, ranges, files, pipeline name. Exit 2 on any problem."""
    r, _ = _load(recipe)
    console.print(f"[green]✓[/green] {recipe} is valid: pipeline [bold]{r.pipeline}[/bold], teacher {r.teacher.model}")


@app.command()
def plan(recipe: RecipeArg, output: OutputOpt = None) -> None:
    """Print the stages the recipe would run, where they write, and which are already done."""
    from dataengine.runner import default_run_dir, describe_plan
    from dataengine.runner import plan as make_plan

    r, base = _load(recipe)
    run_dir = output or default_run_dir(r, base)
    console.print(f"pipeline [bold]{r.pipeline}[/bold] -> {run_dir}")
    describe_plan(make_plan(r, base, run_dir), run_dir, console.print)


@app.command()
def run(
    recipe: RecipeArg,
    stage: Annotated[list[str] | None, typer.Option("--stage", help="run only this stage (repeatable)")] = None,
    force: Annotated[
        list[str] | None, typer.Option("--force", help="rerun this stage from scratch (repeatable)")
    ] = None,
    output: OutputOpt = None,
) -> None:
    """Run the recipe's pipeline. Finished stages are skipped; an interrupted stage resumes."""
    from dataengine.runner import run_recipe

    r, base = _load(recipe)
    run_recipe(r, base, run_dir=output, only=stage, force=force, console=console)


@app.command()
def publish(
    run_dir: Annotated[Path, typer.Argument(help="a finished run folder (runs/<name>)", show_default=False)],
    to: Annotated[str, typer.Option("--to", help="hf://datasets/ORG/NAME, file://PATH or a folder path")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="write the layout locally and stop; no upload")] = False,
) -> None:
    """Publish a finished run's curated rows (configs, splits, dataset card) to the Hub or a folder.
    The Hub token comes from HF_TOKEN or `hf auth login`; the same content twice makes no new commit."""
    from dataengine.publish.stage import publish_run

    publish_run(run_dir, to, dry_run, console)


@app.command()
def reference() -> None:
    """Print the recipe reference (every key, type, default and meaning) as Markdown."""
    from dataengine.reference import render

    typer.echo(render(), nl=False)


@teacher_app.command("build")
def teacher_build(recipe: RecipeArg) -> None:
    """Build (once) the recipe's builtin teacher and print its folder."""
    from dataengine.teacher.server import resolve_model

    r, _ = _load(recipe)
    if not r.teacher.is_builtin:
        raise UserError(f"teacher.model is {r.teacher.model!r}, not a builtin:<name> teacher: nothing to build")
    console.print(resolve_model(r.teacher, log=console.print))


@teacher_app.command("serve")
def teacher_serve(recipe: RecipeArg, output: OutputOpt = None) -> None:
    """Start vLLM's OpenAI-compatible server for the recipe's teacher; Ctrl-C stops it."""
    from dataengine.runner import default_run_dir
    from dataengine.teacher.server import TeacherServer, served_name

    r, base = _load(recipe)
    if r.teacher.endpoint:
        raise UserError(f"teacher.endpoint is set ({r.teacher.endpoint}): that server is already running elsewhere")
    log_path = (output or default_run_dir(r, base)) / ".work" / "teacher-server.log"
    server = TeacherServer(r.teacher, log_path, log=console.print)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.start()
        console.print(f"serving [bold]{served_name(r.teacher)}[/bold] at {server.base_url}/v1 — Ctrl-C to stop")
        server.process.wait()
        raise StageError(f"vLLM server exited with code {server.process.returncode}:\n{server.log_tail()}")
    except KeyboardInterrupt:
        console.print("stopping")
    finally:
        server.stop()


def main() -> None:
    try:
        app()
    except UserError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(exc.exit_code)
    except StageError as exc:
        err.print(f"[red]failed:[/red] {exc}", highlight=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted: finished work is kept; run the same command again to resume")
        sys.exit(130)


if __name__ == "__main__":
    main()
