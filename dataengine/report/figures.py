"""The report's figures as inline SVG, drawn with matplotlib (text kept as text, no scripts, no files).

Each function takes the run's facts and returns an SVG string, or None when the run has nothing to show
there (the page then says why instead).
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")  # no display: render to SVG only
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402

from dataengine import numbers  # noqa: E402
from dataengine.facts import RunFacts  # noqa: E402
from dataengine.rows.queries import length_summary  # noqa: E402

STYLE = {
    "svg.fonttype": "none",  # text stays text: searchable, small, crisp
    "svg.hashsalt": "dataengine",  # stable element ids: the same run gives the same page
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}

WIDE = (7.5, 3.2)


def _styled(draw: Callable[[RunFacts], str | None]) -> Callable[[RunFacts], str | None]:
    """Draw with the report's style without changing matplotlib's settings for anyone else in the process."""

    @functools.wraps(draw)
    def styled(facts: RunFacts) -> str | None:
        with plt.rc_context(STYLE):
            return draw(facts)

    return styled


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]  # inline: without the XML declaration and doctype


@_styled
def funnel(facts: RunFacts) -> str | None:
    """Rows per kind/language at each step: generated, kept by curation, trained on, published."""
    if not facts.funnel:
        return None
    groups, steps = list(facts.funnel), facts.funnel_steps
    fig, ax = plt.subplots(figsize=(max(WIDE[0], 1.1 * len(groups) * len(steps) / 2), WIDE[1]))
    width = 0.8 / len(steps)
    for i, step in enumerate(steps):
        xs = [g + (i - (len(steps) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, [facts.funnel[group].get(step, 0) for group in groups], width, label=step)
        ax.bar_label(bars, fontsize=7)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("rows")
    ax.legend(ncols=len(steps), loc="lower left", bbox_to_anchor=(0, 1.0), frameon=False)
    return _svg(fig)


@_styled
def drops(facts: RunFacts) -> str | None:
    if not facts.drops:
        return None
    reasons = list(facts.drops)[::-1]
    fig, ax = plt.subplots(figsize=(WIDE[0], 0.3 * len(reasons) + 0.8))
    bars = ax.barh(reasons, [facts.drops[r] for r in reasons], color="#c0504d")
    ax.bar_label(bars, fontsize=7, padding=2)
    ax.set_xlabel("rows dropped")
    return _svg(fig)


@_styled
def judge_scores(facts: RunFacts) -> str | None:
    """The judge's mean scores in bins of 0.5, kept stacked on rejected, and the threshold between them."""
    if facts.judge is None:
        return None
    histogram = facts.judge.score_histogram
    bins = [i / 2 for i in range(2, 11)]  # 1.0 .. 5.0
    kept = [histogram["kept"].get(f"{b:.1f}", 0) for b in bins]
    rejected = [histogram["rejected"].get(f"{b:.1f}", 0) for b in bins]
    fig, ax = plt.subplots(figsize=WIDE)
    ax.bar(bins, rejected, width=0.4, color="#c0504d", label=f"rejected ({sum(rejected)})")
    ax.bar(bins, kept, width=0.4, bottom=rejected, color="#4f81bd", label=f"kept ({sum(kept)})")
    threshold = facts.judge.threshold
    ax.axvline(threshold - 0.25, linestyle="--", color="grey", label=f"threshold {numbers.metric(threshold)}")
    ax.set_xticks(bins)
    ax.set_xlabel(f"mean score given by {facts.judge.judge_model} (bins of 0.5)")
    ax.set_ylabel("rows")
    ax.legend(frameon=False)
    return _svg(fig)


@_styled
def answer_lengths(facts: RunFacts) -> str | None:
    series = {name: lengths for name, lengths in facts.answer_chars.items() if len(lengths)}
    if not series:
        return None
    top = max(length_summary(lengths).max for lengths in series.values())
    bins = [top * i / 20 for i in range(21)] if top else 1
    fig, ax = plt.subplots(figsize=WIDE)
    for name, lengths in series.items():
        ax.hist(lengths, bins=bins, alpha=0.6, label=f"{name} ({len(lengths)})")
    ax.set_xlabel("answer length (characters)")
    ax.set_ylabel("rows")
    ax.legend(frameon=False)
    return _svg(fig)


@_styled
def cluster_sizes(facts: RunFacts) -> str | None:
    if not facts.cluster_sizes:
        return None
    sizes = list(facts.cluster_sizes)
    fig, ax = plt.subplots(figsize=(WIDE[0] / 1.5, WIDE[1]))
    bars = ax.bar([str(s) for s in sizes], [facts.cluster_sizes[s] for s in sizes], width=0.5, color="#4f81bd")
    ax.bar_label(bars, fontsize=7)
    ax.set_xlim(-0.75, len(sizes) - 0.25)
    ax.set_xlabel("near-duplicate cluster size (1: no duplicate found)")
    ax.set_ylabel("kept rows")
    return _svg(fig)


@_styled
def throughput(facts: RunFacts) -> str | None:
    if not facts.throughput:
        return None
    seconds, rates = zip(*facts.throughput, strict=True)
    fig, ax = plt.subplots(figsize=WIDE)
    ax.plot([s / 60 for s in seconds], rates, marker="o", markersize=3)
    if facts.tokens_per_second:
        ax.axhline(facts.tokens_per_second, linestyle="--", color="grey", label=f"run: {facts.tokens_per_second}")
        ax.legend(frameon=False)
    ax.set_xlabel("minutes since the first answer")
    ax.set_ylabel("teacher tokens/s")
    ax.set_ylim(bottom=0)
    return _svg(fig)


@_styled
def losses(facts: RunFacts) -> str | None:
    phases = {name: points for name, points in facts.losses.items() if points}
    if not phases:
        return None
    fig, axes = plt.subplots(1, len(phases), figsize=(WIDE[0], WIDE[1]), squeeze=False)
    for ax, (name, points) in zip(axes[0], phases.items(), strict=True):
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, marker="o", markersize=3)
        ax.set_title(name)
        ax.set_xlabel("step")
    axes[0][0].set_ylabel("training loss")
    return _svg(fig)


@_styled
def fine_tune_load(facts: RunFacts) -> str | None:
    """An MoE student's expert load per layer over its fine-tuning steps (CV of load at each logging step),
    beside the load the routing map predicted from the teacher's routing of the same rows."""
    phases = [p for p in facts.training.phases if p.expert_cv] if facts.training else []
    if not phases:
        return None
    observed = np.array([cv for p in phases for _, cv in p.expert_cv]).T  # [layers, logging steps]
    steps = [f"{p.method} {step}" for p in phases for step, _ in p.expert_cv]
    predicted = facts.routing["overall"]["cv"] if facts.routing else None
    panels = 2 if predicted is not None and len(predicted) == len(observed) else 1
    fig, axes = plt.subplots(
        1, panels, figsize=(WIDE[0], 0.12 * len(observed) + 1.8), squeeze=False, width_ratios=[1, 6][-panels:]
    )
    peak = max(1.0, float(observed.max()), max(predicted) if panels == 2 else 0.0)
    if panels == 2:
        axes[0][0].imshow(np.array(predicted)[:, None], aspect="auto", cmap="magma_r", vmin=0, vmax=peak)
        axes[0][0].set_title("predicted\n(routing map)", fontsize=8)
        axes[0][0].set_xticks([])
        axes[0][0].set_ylabel("MoE layer")
        axes[0][0].grid(False)
    ax = axes[0][-1]
    image = ax.imshow(observed, aspect="auto", cmap="magma_r", vmin=0, vmax=peak, interpolation="nearest")
    ax.set_title("observed while fine-tuning (CV of load since the last log)", fontsize=8)
    ax.set_xticks(range(len(steps)), labels=steps, rotation=60, fontsize=6, ha="right")
    ax.set_xlabel("logging step")
    ax.grid(False)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="CV of expert load (0 = even)")
    return _svg(fig)


EVAL_COLOURS = {"before": "#9bbb59", "after": "#4f81bd", "teacher": "#8064a2"}


@_styled
def evaluation(facts: RunFacts) -> str | None:
    """Student before and after training, and the teacher where the same check applies to its answers."""
    if facts.evaluation is None:
        return None
    metrics = facts.evaluation.metrics
    fig, axes = plt.subplots(1, len(metrics), figsize=(WIDE[0] + 1, WIDE[1]))
    for ax, metric in zip(axes, metrics, strict=True):
        bars = {"before": facts.evaluation.before.get(metric.key), "after": facts.evaluation.after.get(metric.key)}
        if (teacher := facts.teacher_value(metric.key)) is not None:
            bars["teacher"] = teacher
        shown = {name: value for name, value in bars.items() if value is not None and math.isfinite(value)}
        drawn = ax.bar(list(shown), list(shown.values()), color=[EVAL_COLOURS[name] for name in shown])
        ax.bar_label(drawn, labels=[numbers.metric(v) for v in shown.values()], fontsize=7)
        if metric.scale == "log" and shown:
            ax.set_yscale("log")
        if metric.scale == "rate":
            ax.set_ylim(0, 1.1)
        if not shown:
            ax.text(0.5, 0.5, numbers.NO_VALUE, ha="center", va="center", transform=ax.transAxes)
        ax.set_title(metric.short + (" (log scale)" if metric.scale == "log" else ""), fontsize=9)
    return _svg(fig)


@_styled
def expert_load(facts: RunFacts) -> str | None:
    """Heatmaps of expert load (layers x experts, 1.0 = uniform) of the kept rows, overall and per language and
    kind."""
    if facts.routing is None or not facts.routing["num_layers"] or not facts.routing["overall"]["rows"]:
        return None
    routing = facts.routing
    panels = {"all kept rows": routing["overall"]}
    for field in ("language", "kind"):
        panels |= {f"{field} {name}": s for name, s in routing["slices"][field].items()}
    fig, axes = plt.subplots(
        1, len(panels), figsize=(1.3 * len(panels) + 1.5, 0.12 * routing["num_layers"] + 1.6), squeeze=False
    )
    peak = max(2.0, max(v for s in panels.values() for row in s["load"] for v in row))
    layers = range(0, routing["num_layers"], max(1, routing["num_layers"] // 6))
    for i, (ax, (title, s)) in enumerate(zip(axes[0], panels.items(), strict=True)):
        image = ax.imshow(s["load"], aspect="auto", cmap="RdBu_r", vmin=0, vmax=peak, interpolation="nearest")
        ax.set_title(f"{title}\n({s['rows']} rows)", fontsize=8)
        ax.set_xlabel("expert")
        ax.set_xticks(range(routing["num_experts"]))
        ax.set_yticks(layers, labels=[str(n) for n in layers] if i == 0 else [])
        ax.grid(False)
    axes[0][0].set_ylabel("layer")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="load (1.0 = uniform)")
    return _svg(fig)


# (key in a map's summary, title, what a perfectly even load scores)
BALANCE = (
    ("cv", "CV of load", 0.0),
    ("max_over_mean", "max / mean", 1.0),
    ("balancedness", "balancedness (mean / max)", 1.0),
    ("gini", "Gini", 0.0),
)


@_styled
def expert_balance(facts: RunFacts) -> str | None:
    """Per MoE layer, how evenly the kept rows (and the rejected ones) load the experts, and how many experts
    are cold."""
    if facts.routing is None or not facts.routing["num_layers"] or not facts.routing["overall"]["rows"]:
        return None
    groups = facts.routing["slices"]["kept"]
    fig, axes = plt.subplots(1, len(BALANCE) + 1, figsize=(11, 2.4), sharex=True)
    layers = range(facts.routing["num_layers"])
    for ax, (key, title, even) in zip(axes, BALANCE, strict=False):
        for name, summary in groups.items():
            ax.plot(layers, summary[key], marker="o", markersize=2, label=f"{name} ({summary['rows']} rows)")
        ax.axhline(even, color="#999", linewidth=0.8, linestyle=":")
        ax.set_title(title, fontsize=9)
    cold = axes[-1]
    for summary in groups.values():
        cold.plot(layers, [len(c) for c in summary["cold"]], marker="o", markersize=2)
    cold.set_title(f"cold experts (of {facts.routing['num_experts']})", fontsize=9)
    cold.set_ylim(bottom=0)
    for ax in axes:
        ax.set_xlabel("layer")
    axes[0].legend(fontsize=7)
    return _svg(fig)


@_styled
def coactivation(facts: RunFacts) -> str | None:
    """Pointwise mutual information of two experts chosen for the same token, in the first, middle and last
    MoE layers (above 0: chosen together more often than chance; blank: never together)."""
    if facts.routing is None or not facts.routing["num_layers"] or not facts.routing["overall"]["rows"]:
        return None
    routing = facts.routing
    layers = sorted({0, routing["num_layers"] // 2, routing["num_layers"] - 1})
    fig, axes = plt.subplots(1, len(layers), figsize=(2.4 * len(layers) + 1.2, 2.6), squeeze=False)
    values = [
        [[float("nan") if v is None else v for v in row] for row in routing["coactivation_pmi"][n]] for n in layers
    ]
    finite = [abs(v) for m in values for row in m for v in row if math.isfinite(v)]
    span = max(finite, default=1.0) or 1.0
    for ax, layer, matrix in zip(axes[0], layers, values, strict=True):
        image = ax.imshow(matrix, cmap="PuOr_r", vmin=-span, vmax=span, interpolation="nearest")
        ax.set_title(f"layer {layer}", fontsize=8)
        ax.set_xticks(range(routing["num_experts"]))
        ax.set_yticks(range(routing["num_experts"]))
        ax.set_xlabel("expert")
        ax.grid(False)
    axes[0][0].set_ylabel("expert")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="PMI")
    return _svg(fig)
