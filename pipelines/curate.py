"""curate: the teacher writes samples (or, with `ingest`, the recipe brings finished rows), then datatrove
filters, dedups and decontaminates them; then
they are routed through the teacher's experts when the recipe has `route`, and published when it has
`publish`. Where curation keeps fewer rows than asked (`generate.top_up`, under its `enough` share), more
prompts are generated and both stages (and the judge) run again before the rest."""

from __future__ import annotations

from pathlib import Path

from dataengine import (
    BalanceStage,
    CurateStage,
    GenerateStage,
    IngestStage,
    JudgeStage,
    Manifest,
    NextRound,
    Pipeline,
    PublishStage,
    Recipe,
    RouteStage,
    Stage,
    add_round,
)


def build(recipe: Recipe, base_dir: Path) -> Pipeline:
    stages = curated(recipe, base_dir)
    if recipe.publish is not None:
        stages.append(PublishStage(recipe, base_dir, rows_from=kept_rows(stages), preference_from=pairs(stages)))
    return Pipeline(stages, next_round=top_up(recipe), round_after=round_after(stages))


def source(recipe: Recipe, base_dir: Path) -> Stage:
    """Where the rows come from: the teacher writes them (`generate`), or the recipe brings them (`ingest`)."""
    return IngestStage(recipe, base_dir) if recipe.ingest is not None else GenerateStage(recipe, base_dir)


def check(recipe: Recipe) -> list[str]:
    """What this pipeline cannot run without."""
    return ["pipeline curate needs a `curate` block"] if recipe.curate is None else []


def curated(recipe: Recipe, base_dir: Path) -> list[Stage]:
    """Generate, curate, with `curate.judge` the judge's verdicts on what curation kept, then with a `route`
    block the routing of what was kept and rejected, then with `curate.balance` the selection of kept rows
    for an even expert load."""
    rows = source(recipe, base_dir)
    curate = CurateStage(recipe, base_dir, rows_from=rows.outputs["rows"])
    stages: list[Stage] = [rows, curate]
    if recipe.curate.judge is not None:
        stages.append(JudgeStage(recipe, base_dir, rows_from=curate.outputs["kept"]))
    kept = kept_rows(stages)
    if recipe.route is not None:
        rejected = curate.outputs["rejected"] if recipe.route.rejected else None
        route = RouteStage(recipe, base_dir, rows_from=kept, rejected_from=rejected)
        stages.append(route)
        if recipe.curate.balance is not None:
            stages.append(BalanceStage(recipe, base_dir, rows_from=kept, routing_from=route.outputs["map"]))
    return stages


def kept_rows(stages: list[Stage]) -> str:
    """The folder of the rows curation finally kept: the balanced selection when there is one, else what the
    judge kept when there is one."""
    return next(s.outputs["kept"] for s in reversed(stages) if s.name in ("balance", "judge", "curate"))


def pairs(stages: list[Stage]) -> str | None:
    """The folder of the judge's preference pairs, when it makes them."""
    return next((s.outputs["preference"] for s in stages if s.name == "judge" and "preference" in s.outputs), None)


def round_after(stages: list[Stage]) -> str:
    """Top-up reads what generate, curate and the judge made: its rounds rerun those and nothing after them."""
    return next(s.name for s in reversed(stages) if s.name in ("judge", "curate"))


def top_up(recipe: Recipe) -> NextRound | None:
    """After generate and curate: one more round of prompts where curation fell short of the recipe's targets
    (under `top_up.enough` of them; what the judge kept, when there is one). Rows brought with `ingest` have no
    quota to top up."""
    if recipe.generate is None:
        return None

    def next_round(run_dir: Path, manifests: dict[str, Manifest]) -> str | None:
        generated, curated, judged = (manifests.get(name) for name in ("generate", "curate", "judge"))
        extra = add_round(recipe, run_dir, generated, curated, judged)
        return f"asking for more prompts where curation fell short: {extra}" if extra else None

    return next_round
