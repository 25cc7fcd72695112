"""runs/<run>/report.html: one static page (inline SVG and CSS, nothing fetched; the one script is the row
browser's, inline) to open in a browser or attach to a message."""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path

from dataengine import numbers
from dataengine.atomic import write_atomic
from dataengine.experts import capacity
from dataengine.facts import RunFacts, collect
from dataengine.report import browser, compared, figures
from dataengine.run_folder import RunFolder

# (figure id, title, draw, what the page says when the run has nothing to draw there)
SECTIONS: tuple[tuple[str, str, Callable[[RunFacts], str | None], str], ...] = (
    ("funnel", "Rows through the stages, per kind and language", figures.funnel, "no stage has written rows yet"),
    ("drops", "Why curation and the judge dropped rows", figures.drops, "curation has not run, or dropped nothing"),
    ("judge", "The judge's scores, kept and rejected", figures.judge_scores, "the recipe has no `curate.judge`"),
    ("lengths", "Answer lengths, kept and rejected", figures.answer_lengths, "curation has not run"),
    ("clusters", "Near-duplicate cluster sizes of kept rows", figures.cluster_sizes, "curation has not run"),
    (
        "throughput",
        "Teacher tokens/s over the generation",
        figures.throughput,
        "generation has not run, or ran before throughput was recorded",
    ),
    (
        "experts",
        "How the teacher routes the kept rows through its experts",
        figures.expert_load,
        "the recipe has no `route` block",
    ),
    (
        "balance",
        "How evenly each MoE layer's experts are loaded",
        figures.expert_balance,
        "the recipe has no `route` block",
    ),
    (
        "coactivation",
        "Which experts are chosen together for a token (PMI)",
        figures.coactivation,
        "the recipe has no `route` block",
    ),
    ("loss", "Training loss", figures.losses, "no student was trained in this run"),
    (
        "finetune_load",
        "An MoE student's expert load while fine-tuning, beside the routing map's",
        figures.fine_tune_load,
        "no MoE student was fine-tuned in this run",
    ),
    (
        "evaluation",
        "Student before and after training, and the teacher",
        figures.evaluation,
        "no student evaluation in this run",
    ),
)

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; color: #222; padding: 0 1rem; }
h1 { margin-bottom: 0.2rem; } .sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; } td, th { padding: 0.2rem 0.8rem; text-align: right; }
th:first-child, td:first-child { text-align: left; } thead th { border-bottom: 1px solid #999; }
figure { margin: 1.5rem 0; } figure svg { max-width: 100%; height: auto; }
.empty { color: #888; font-style: italic; }
"""


def _e(value: object) -> str:
    return html.escape(str(value))


def _stage_table(facts: RunFacts) -> str:
    rows = "".join(
        f"<tr><td>{_e(s.stage)}</td><td>{numbers.count(s.rows_in)}</td><td>{numbers.count(s.rows_out)}</td>"
        f"<td>{numbers.seconds(s.seconds)}</td></tr>"
        for s in facts.stages
    )
    head = "<thead><tr><th>stage</th><th>rows in</th><th>rows out</th><th>seconds</th></tr></thead>"
    return f'<table id="stages">{head}<tbody>{rows}</tbody></table>'


def _eval_table(facts: RunFacts) -> str:
    if facts.evaluation is None:
        return ""
    ev = facts.evaluation
    rows = "".join(
        f"<tr><td>{_e(m.short)}</td><td>{_e(ev.cell('before', m.key))}</td>"
        f"<td>{_e(ev.cell('after', m.key))}</td><td>{_e(facts.teacher_figure(m.key))}</td></tr>"
        for m in ev.metrics
    )
    head = "<thead><tr><th>metric</th><th>before</th><th>after</th><th>teacher</th></tr></thead>"
    where = (
        "its perplexity on its own held-out answers and the share of them that passed curation's checks"
        if ev.teacher
        else "curation's checks on all its answers that reached them"
    )
    if ev.teacher and (too_long := ev.teacher.get("too_long")):
        where += f" (its perplexity leaves out {too_long} rows longer than its served context)"
    note = (
        f"<p>On {ev.held_out_rows} held-out rows; in brackets, the 95% bootstrap interval over those rows. "
        f"The teacher's figures: {where}.</p>"
    )
    compared = "".join(
        f"<tr><td>{_e(name)}</td><td>{_e(ev.cell(name, 'kl_teacher_student'))}</td>"
        f"<td>{_e(ev.cell(name, 'perplexity'))}</td></tr>"
        for name in ev.inits
    )
    if compared:
        inits_head = (
            "<thead><tr><th>other start, untrained</th><th>KL(teacher ‖ student)</th><th>perplexity</th></tr></thead>"
        )
        note += f'<table id="compared-inits">{inits_head}<tbody>{compared}</tbody></table>'
    return f'<table id="evaluation-table">{head}<tbody>{rows}</tbody></table>{note}'


def _turns_table(facts: RunFacts) -> str:
    """Kept conversations by their assistant turns, per group that has any of several; "" when none has."""
    if not facts.turns:
        return ""
    most = max(n for counts in facts.turns.values() for n in counts)
    head = "<thead><tr><th>kind/language</th>" + "".join(f"<th>{n}</th>" for n in range(1, most + 1)) + "</tr></thead>"
    body = "".join(
        f"<tr><td>{_e(group)}</td>" + "".join(f"<td>{counts.get(n, 0)}</td>" for n in range(1, most + 1)) + "</tr>"
        for group, counts in facts.turns.items()
    )
    return (
        '<section id="turns"><h2>Kept conversations by assistant turns</h2>'
        f"<table>{head}<tbody>{body}</tbody></table></section>"
    )


def _reasoning_table(facts: RunFacts) -> str:
    """The reasoning lengths of a thinking teacher's kept rows per group; "" when no row has reasoning."""
    if not facts.reasoning:
        return ""
    body = "".join(
        f"<tr><td>{_e(group)}</td><td>{n['rows']}</td><td>{n['mean_tokens']:.0f}</td><td>{n['max_tokens']}</td></tr>"
        for group, n in facts.reasoning.items()
    )
    head = "<thead><tr><th>kind/language</th><th>rows</th><th>mean</th><th>longest</th></tr></thead>"
    return (
        '<section id="reasoning"><h2>Reasoning of kept rows (tokens)</h2>'
        f"<table>{head}<tbody>{body}</tbody></table></section>"
    )


def _capacity_table(facts: RunFacts) -> str:
    """What the captured routing means for expert capacity and replication; "" without a routing map (or one
    written before capacity was measured)."""
    section = (facts.routing or {}).get("capacity")
    if not section:
        return ""
    body = "".join(
        f"<tr><td>{s['factor']:g}</td><td>{s['mean']:.1%}</td><td>{_e(s['worst_layer'])}</td><td>{s['worst']:.1%}</td></tr>"
        for s in capacity.summary(section)
    )
    columns = ("capacity factor", "dropped, mean over layers", "worst layer", "dropped there")
    head = "<thead><tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr></thead>"
    return (
        '<section id="capacity"><h2>Expert capacity and replication</h2>'
        f"<p>Token slots past their expert's capacity (Switch/GShard: factor × tokens × top-k / experts per batch), "
        f"over {capacity.batches_of(section)}; "
        f"{_e(capacity.replication(section))}.</p>"
        f"<table>{head}<tbody>{body}</tbody></table></section>"
    )


def _optional(key: str, title: str, draw: Callable[[], str]) -> str:
    """A section that reads more than the run's facts (an earlier run, the rows themselves): one that cannot be
    drawn says why instead of costing the page."""
    try:
        return draw()
    except Exception as exc:
        said = f'<p class="empty">Not drawn: {_e(repr(exc))}</p>'
        return f'<section id="{key}" data-drawn="false"><h2>{_e(title)}</h2>{said}</section>'


def _against_the_run_before(facts: RunFacts) -> str:
    """A scheduled run beside its recipe's scheduled run before it (`report/compared.py`); "" for other runs."""
    before = compared.run_before(facts.run_dir)
    if before is None:
        return ""
    names = compared.labels([before, facts.run_dir])
    tables = []
    for grid in compared.grids([collect(before), facts]):
        head = "".join(f"<th>{_e(c)}</th>" for c in [grid.first, *names])
        body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in grid.rows)
        tables.append(f"<h3>{_e(grid.title)}</h3><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    return (
        f'<section id="against"><h2>Against the run before</h2><p>{_e(names[0])}: the scheduled run of this recipe '
        f"before this one ({_e(before)}).</p>{''.join(tables)}</section>"
    )


def render(facts: RunFacts) -> str:
    parts = [
        f"<h1>{_e(facts.name)}</h1>",
        f'<p class="sub">run {_e(facts.run_id)} · {_e(facts.run_dir)}</p>',
        "<h2>Stages</h2>",
        _stage_table(facts),
    ]
    for key, title, draw, missing in SECTIONS:
        svg = draw(facts)
        body = svg if svg is not None else f'<p class="empty">Nothing to show: {_e(missing)}.</p>'
        extra = _eval_table(facts) if key == "evaluation" else ""
        parts.append(
            f'<figure id="{key}" data-drawn="{str(svg is not None).lower()}"><h2>{_e(title)}</h2>{body}{extra}</figure>'
        )
    parts.append(_capacity_table(facts))
    parts.append(_turns_table(facts))
    parts.append(_reasoning_table(facts))
    parts.append(_optional("against", "Against the run before", lambda: _against_the_run_before(facts)))
    parts.append(_optional("rows", "Rows, kept and rejected", lambda: browser.section(RunFolder(facts.run_dir))))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(facts.name)}: dataengine run report</title><style>{STYLE}{browser.STYLE}</style></head>"
        f"<body>{''.join(parts)}</body></html>\n"
    )


def write_report(run_dir: Path) -> Path:
    path = RunFolder(run_dir).report
    write_atomic(path, render(collect(run_dir)))  # a reader never sees half a page
    return path
