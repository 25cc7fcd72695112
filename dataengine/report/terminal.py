"""`dataengine status RUN_DIR`: the report's figures as terminal tables (bars and sparklines in text)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dataengine import numbers
from dataengine.facts import RunFacts
from dataengine.rows.queries import length_summary
from dataengine.run_folder import RunFolder

TICKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float]) -> str:
    if not values:
        return ""
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(TICKS[round((v - low) / span * (len(TICKS) - 1))] for v in values)


def _bar(value: int, top: int, width: int = 30) -> str:
    return "█" * max(1, round(value / top * width)) if value and top else ""


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    return table


def show(facts: RunFacts, console: Console) -> None:
    console.print(f"[bold]{escape(facts.name)}[/bold]  run {escape(facts.run_id)}  ({escape(str(facts.run_dir))})")
    sections = (
        _stages,
        _funnel,
        _drops,
        _judge,
        _lengths_and_clusters,
        _turns,
        _reasoning,
        _throughput,
        _losses,
        _evaluation,
    )
    for section in sections:
        section(facts, console)
    report = RunFolder(facts.run_dir).report
    console.print(f"report: {report}" if report.is_file() else "no report.html yet (written when a run ends)")


def _stages(facts: RunFacts, console: Console) -> None:
    stages = _table("stages", "stage", "rows in", "rows out", "seconds")
    for s in facts.stages:
        stages.add_row(s.stage, numbers.count(s.rows_in), numbers.count(s.rows_out), numbers.seconds(s.seconds))
    console.print(stages if facts.stages else "no stage has finished yet")


def _funnel(facts: RunFacts, console: Console) -> None:
    if facts.funnel:
        funnel = _table("rows through the stages", "kind/language", *facts.funnel_steps)
        for group, counts in facts.funnel.items():
            # groups and reasons come from the rows (an ingested language): text, never rich markup
            funnel.add_row(escape(group), *(str(counts.get(step, 0)) for step in facts.funnel_steps))
        console.print(funnel)


def _drops(facts: RunFacts, console: Console) -> None:
    if facts.drops:
        top = max(facts.drops.values())
        drops = _table("why curation and the judge dropped rows", "reason", "rows", "")
        for reason, n in facts.drops.items():
            drops.add_row(escape(reason), str(n), f"[red]{_bar(n, top)}[/red]")
        console.print(drops)


def _judge(facts: RunFacts, console: Console) -> None:
    if facts.judge is not None:
        histogram = facts.judge.score_histogram
        bins = sorted({*histogram["kept"], *histogram["rejected"]}, key=float)
        top = max([*histogram["kept"].values(), *histogram["rejected"].values(), 1])
        title = f"the judge's mean scores ({facts.judge.judge_model}, threshold {facts.judge.threshold})"
        table = _table(title, "score from", "kept", "rejected", "")
        for b in bins:
            kept, rejected = histogram["kept"].get(b, 0), histogram["rejected"].get(b, 0)
            table.add_row(
                b, str(kept), str(rejected), f"[blue]{_bar(kept, top)}[/blue][red]{_bar(rejected, top)}[/red]"
            )
        console.print(table)


def _throughput(facts: RunFacts, console: Console) -> None:
    if facts.throughput:
        rates = [rate for _, rate in facts.throughput]
        console.print(
            f"teacher tokens/s over the generation: {sparkline(rates)}  "
            f"min {min(rates):.1f}, max {max(rates):.1f}, run {numbers.metric(facts.tokens_per_second)}"
        )


def _losses(facts: RunFacts, console: Console) -> None:
    if facts.losses:
        loss = _table(f"training loss ({facts.student})", "phase", "steps", "first", "last", "curve")
        for phase in facts.training.phases:
            values = [v for _, v in phase.losses]
            loss.add_row(
                phase.method,
                numbers.count(phase.steps),
                numbers.metric(phase.first_loss),
                numbers.metric(phase.last_loss),
                sparkline(values),
            )
        console.print(loss)


def _evaluation(facts: RunFacts, console: Console) -> None:
    if facts.evaluation is not None:
        ev = _table(
            f"evaluation on {facts.evaluation.held_out_rows} held-out rows", "metric", "before", "after", "teacher"
        )
        for metric in facts.evaluation.metrics:
            ev.add_row(
                metric.short,
                facts.evaluation.cell("before", metric.key),
                facts.evaluation.cell("after", metric.key),
                facts.teacher_figure(metric.key),
            )
        console.print(ev)
        if win := facts.evaluation.win_rate_line():
            console.print(win)


def _turns(facts: RunFacts, console: Console) -> None:
    if facts.turns:
        most = max(n for counts in facts.turns.values() for n in counts)
        table = _table("kept conversations by assistant turns", "kind/language", *(str(n) for n in range(1, most + 1)))
        for group, counts in facts.turns.items():
            table.add_row(escape(group), *(str(counts.get(n, 0)) for n in range(1, most + 1)))
        console.print(table)


def _reasoning(facts: RunFacts, console: Console) -> None:
    if facts.reasoning:
        table = _table("reasoning of kept rows (tokens)", "kind/language", "rows", "mean", "longest")
        for group, n in facts.reasoning.items():
            table.add_row(escape(group), str(n["rows"]), f"{n['mean_tokens']:.0f}", str(n["max_tokens"]))
        console.print(table)


def _lengths_and_clusters(facts: RunFacts, console: Console) -> None:
    series = {name: lengths for name, lengths in facts.answer_chars.items() if len(lengths)}
    if series:
        lengths = _table("answer lengths (characters)", "rows", "count", "min", "median", "p90", "max")
        for name, values in series.items():
            n = length_summary(values)
            lengths.add_row(name, str(n.rows), str(n.min), f"{n.median:.0f}", str(n.p90), str(n.max))
        console.print(lengths)
    if facts.cluster_sizes:
        clusters = _table("near-duplicate cluster sizes of kept rows", "size", "rows")
        for size, n in facts.cluster_sizes.items():
            clusters.add_row(str(size), str(n))
        console.print(clusters)
