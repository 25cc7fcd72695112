"""The dataset card (README.md): Hub front matter plus the provenance a reader needs to trust the data.

Built with huggingface_hub's `DatasetCard` / `DatasetCardData`, so the Hub and `DatasetCard.load` parse it.
Nothing time-dependent goes in: the same content gives the same card, and republishing is a no-op.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import yaml
from datasets import Features
from huggingface_hub import DatasetCard, DatasetCardData

from dataengine import numbers
from dataengine.experts import capacity
from dataengine.facts import Evaluation, RunFacts
from dataengine.publish.layout import add_dataset_infos
from dataengine.recipe import Recipe
from dataengine.results import JudgeStats
from dataengine.rows import frames, queries
from dataengine.secrets import scrub
from dataengine.target.existing import HISTORY_KEY
from dataengine.target.send import MARK


def size_category(n: int) -> str:
    labels = ("n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M", "100M<n<1B")
    for power, label in enumerate(labels, start=3):
        if n < 10**power:
            return label
    return "1B<n<10B"


def moe_shape(recipe: Recipe) -> str:
    teacher = recipe.teacher
    if teacher.is_builtin:
        return f"{teacher.builtin.num_experts} experts, top-{teacher.builtin.top_k} routing (builtin, upcycled)"
    config = Path(teacher.model).expanduser() / "config.json"
    if config.is_file():
        data = json.loads(config.read_text())
        experts = data.get("num_local_experts") or data.get("num_experts")
        if experts:
            return f"{experts} experts, top-{data.get('num_experts_per_tok', '?')} routing"
    return "see the teacher's model card"


@dataclass(frozen=True)
class TestSplit:
    """Where the test split came from: the student's held-out rows or an id hash, and whether rows published
    by earlier runs (which keep their split) are in it too."""

    held_out: bool
    earlier: bool = False

    def sentence(self) -> str:
        new = "exactly the rows the student of this run held out" if self.held_out else "drawn by a hash of the row id"
        if self.earlier:
            return f"Rows published by earlier runs keep their split; this run's new test rows are {new}."
        return f"The test split is {new}."


def build_card(
    recipe: Recipe,
    facts: RunFacts,
    counts: dict[str, dict[str, int]],
    configs: list[dict],
    index: pa.Table,
    load_from: str,
    test_ids: pa.Array,
    split: TestSplit,
    history: list[dict],
    layout: Path,
    features: Features,
    evaluation: Evaluation | None,
    secrets: tuple[str, ...] = (),
    config_features: dict[str, Features] | None = None,
    earlier_sizes: dict[str, dict] | None = None,
) -> DatasetCard:
    publish = recipe.publish
    # the dataset's rows by their index (id, kind, language, teacher_revision; `existing.INDEX_COLUMNS`)
    rows = pl.from_arrow(index).lazy()
    data = DatasetCardData(
        pretty_name=recipe.name,
        language=queries.languages(rows),
        license=publish.license if publish else "other",
        task_categories=["text-generation"],
        size_categories=[size_category(index.num_rows)],
        tags=["synthetic", "dataengine", "mixture-of-experts", *(publish.tags if publish else [])],
        configs=configs,
        **{HISTORY_KEY: history},  # read back by the next appending publish
    )
    add_dataset_infos(data, layout, counts, features, config_features, earlier_sizes)
    revisions = queries.revisions(rows)
    # over the dataset's rows (an appended one's earlier runs' too), as its card describes them
    published = frames.scan(layout)
    shapes = RowShapes(queries.reasoning_lengths(published), queries.conversation_turns(published))
    body = _body(recipe, facts, counts, revisions, load_from, secrets, test_ids, split, history, evaluation, shapes)
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def _body(
    recipe: Recipe,
    facts: RunFacts,
    counts: dict,
    revisions: list[str],
    load_from: str,
    secrets,
    test_ids: pa.Array,
    split: TestSplit,
    history: list[dict],
    evaluation: Evaluation | None,
    shapes: RowShapes,
) -> str:
    if recipe.generate is not None:
        sampling = json.dumps(recipe.generate.sampling.model_dump(mode="json"), sort_keys=True)
        made = [
            scrub(recipe.description or "Synthetic data written by a Mixture-of-Experts teacher.", secrets),
            "",
            "Made with dataengine from one recipe: the teacher's answers, filtered,",
            "deduplicated and decontaminated. Every row carries its provenance (teacher, sampling, seed, run id).",
        ]
        teacher = [f"- sampling: `{sampling}`"]
    else:  # rows brought with `ingest`
        origins = ", ".join(f"`{scrub(source.origin, secrets)}`" for source in recipe.ingest.sources)
        made = [
            scrub(recipe.description or f"Conversations from {origins}, curated.", secrets),
            "",
            f"Made with dataengine from one recipe: rows read from {origins}, filtered, deduplicated and",
            "decontaminated. Rows keep the provenance they came with.",
        ]
        teacher = ["- the answers were not written by this teacher: it serves the stages that ask one"]
    lines = [
        f"<!-- {MARK} -->",
        f"# {recipe.name}",
        "",
        *made,
        "",
        "## Teacher",
        "",
        f"- model: `{scrub(recipe.teacher.model, secrets)}`",
        f"- revision: {', '.join(f'`{r}`' for r in revisions) or 'not recorded'}",
        f"- MoE shape: {moe_shape(recipe)}",
        *teacher,
        "",
        "## Configs and splits",
        "",
        "| config | train | test |",
        "|---|---:|---:|",
        *(f"| {name} | {s.get('train', 0)} | {s.get('test', 0)} |" for name, s in counts.items()),
        "",
        split.sentence(),
        "",
        "## Run history",
        "",
        "| run | started | seed | rows added | rows in all | routing drift (JS from the run before) |",
        "|---|---|---:|---:|---:|---:|",
        *(
            f"| {h['run_id']} | {numbers.text(h.get('started'))} | {h.get('seed')} | {h['rows_added']} | "
            f"{h['rows_total']} | {_drift(h)} |"
            for h in history
        ),
        "",
        "## Counts per stage (latest run)",
        "",
        "| stage | rows in | rows out |",
        "|---|---:|---:|",
    ]
    # the stages that pass rows on, the user's own included (routing, training and evaluation report in their
    # own sections; publishing is what the card describes)
    passing = [s for s in facts.stages if s.stage not in ("route", "train", "evaluate", "publish")]
    lines += [f"| {s.stage} | {numbers.count(s.rows_in)} | {numbers.count(s.rows_out)} |" for s in passing]
    if facts.drops:
        lines += ["", "## Drop reasons", "", "| reason | rows |", "|---|---:|"]
        lines += [f"| {reason} | {n} |" for reason, n in facts.drops.items()]
    if recipe.curate is not None:
        settings = {
            "dedup": recipe.curate.dedup.model_dump(mode="json"),
            "decontamination": recipe.curate.decontamination.model_dump(mode="json"),
        }
        lines += ["", "## Dedup and decontamination", "", "```yaml", _yaml(scrub(settings, secrets)), "```"]
    lines += turns_section(shapes.turns)
    lines += reasoning_section(shapes.reasoning)
    lines += judge_section(facts.judge)
    lines += evaluation_section(evaluation, test_ids)
    lines += expert_coverage_section(facts.routing)
    recipe_json = scrub(recipe.model_dump(mode="json", exclude_none=True), secrets)
    lines += ["", "## Recipe (secrets removed)", "", "```yaml", _yaml(recipe_json), "```"]
    lines += [
        "",
        "## Load it",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        f'ds = load_dataset("{load_from}")  # every row; or a config: load_dataset(..., "{_example(counts)}")',
        "```",
        "",
    ]
    return "\n".join(lines)


class RowShapes(NamedTuple):
    """What the card says of the dataset's rows beyond their counts: reasoning lengths and conversation turns."""

    reasoning: dict[str, dict[str, float]]
    turns: dict[str, dict[int, int]]


def turns_section(turns: dict[str, dict[int, int]]) -> list[str]:
    """Conversations by their assistant turns, per group holding any of several; nothing when none does."""
    if not turns:
        return []
    most = max(n for counts in turns.values() for n in counts)
    lines = [
        "",
        "## Conversations",
        "",
        "Rows by the assistant turns of their conversation (every turn was checked; a conversation was cut at its",
        "last good turn, the reason in `cut_reason`).",
        "",
        "| kind/language | " + " | ".join(f"{n} turn{'s' if n > 1 else ''}" for n in range(1, most + 1)) + " |",
        "|---|" + "---:|" * most,
    ]
    lines += [f"| {g} | " + " | ".join(str(c.get(n, 0)) for n in range(1, most + 1)) + " |" for g, c in turns.items()]
    return lines


def reasoning_section(reasoning: dict[str, dict[str, float]]) -> list[str]:
    """The reasoning of a thinking teacher's rows, per group; nothing when no row has reasoning."""
    if not reasoning:
        return []
    lines = [
        "",
        "## Reasoning",
        "",
        "The teacher reasoned before these answers. Its reasoning is in the `reasoning` column, never in `messages`:",
        "put it back before the answer in the form your student's chat template expects (dataengine trains with",
        "`train.reasoning_format`).",
        "",
        "| kind/language | rows | mean tokens | longest |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {g} | {n['rows']} | {n['mean_tokens']:.0f} | {n['max_tokens']} |" for g, n in reasoning.items()]
    return lines


def judge_section(judge: JudgeStats | None) -> list[str]:
    """The judge's score distribution, kept against rejected, and its mean per criterion."""
    if judge is None:
        return []
    histogram = judge.score_histogram
    bins = sorted({*histogram["kept"], *histogram["rejected"]}, key=float)
    means = ", ".join(f"{name} {numbers.metric(value)}" for name, value in judge.mean_by_criterion.items())
    return [
        "",
        "## Judge",
        "",
        f"Every kept row was rated 1-5 per criterion by `{judge.judge_model}` (columns `judge_scores`, "
        f"`judge_score`, `judge_rationale`). Rows whose mean score was under {numbers.metric(judge.threshold)} "
        f"were dropped (`judge_low`), and so were the {judge.unjudged} rows whose verdict could not be "
        "read (`judge_error`, not in the table below).",
        "",
        "| mean score (from; bins of 0.5) | kept | rejected |",
        "|---:|---:|---:|",
        *(f"| {b} | {histogram['kept'].get(b, 0)} | {histogram['rejected'].get(b, 0)} |" for b in bins),
        "",
        f"Mean score of kept rows {numbers.metric(judge.mean_score_kept)}, of rejected "
        f"{numbers.metric(judge.mean_score_rejected)}; per criterion: {means or numbers.NOT_APPLICABLE}.",
    ]


def evaluation_section(evaluation: Evaluation | None, test_ids: pa.Array) -> list[str]:
    if evaluation is None:
        return []
    held_out = pa.array(sorted(set(evaluation.held_out_ids)), pa.string())
    inside = pc.all(pc.is_in(held_out, value_set=test_ids)).as_py() is not False  # every held-out row is a test row
    if inside and len(held_out) == len(test_ids):  # the test split's ids are unique: the same rows
        which = "the test split"
    else:
        which = "this run's rows of the test split" if inside else "not the same rows as the test split"
    lines = [
        "",
        "## Student evaluation",
        "",
        f"On {evaluation.held_out_rows} held-out rows ({which}); in brackets, the 95% bootstrap interval over "
        "them"
        + (
            "; the teacher: its perplexity on its own answers, the share that passed curation's checks:"
            if evaluation.teacher
            else ":"
        ),
        "",
        "| metric | before training | after training |" + (" teacher |" if evaluation.teacher else ""),
        "|---|---:|---:|" + ("---:|" if evaluation.teacher else ""),
    ]
    for m in evaluation.metrics:
        line = f"| {m.key} | {evaluation.cell('before', m.key)} | {evaluation.cell('after', m.key)} |"
        if evaluation.teacher:
            line += f" {evaluation.cell('teacher', m.key) if m.key in evaluation.teacher else numbers.NOT_APPLICABLE} |"
        lines.append(line)
    if win := evaluation.win_rate_line():
        lines += ["", f"DPO: the student's {win}, on the same held-out prompts."]
    return lines


def _drift(entry: dict) -> str:
    if "expert_load" not in entry:  # the run did not route its rows
        return numbers.NOT_APPLICABLE
    return numbers.metric(entry.get("routing_drift"))


def expert_coverage_section(routing: dict | None) -> list[str]:
    """How the teacher routed the kept rows (the route stage's map), in a few lines."""
    if routing is None:
        return []
    overall = routing["overall"]
    cv = sum(overall["cv"]) / len(overall["cv"]) if overall["cv"] else None
    cold = sum(len(c) for c in overall["cold"])
    lines = [
        "",
        "## Expert coverage",
        "",
        f"How the teacher ({routing['num_layers']} MoE layers, {routing['num_experts']} experts, "
        f"top-{routing['top_k']}) routes the {overall['rows']} kept rows' {overall['tokens']} answer tokens: "
        f"mean per-layer CV of expert load {numbers.metric(cv)} (0 is perfectly even); {cold} cold "
        f"layer-expert pairs (below {routing['cold_below']:.0%} of an even share).",
    ]
    if "capacity" in routing:  # maps written before capacity was measured have none
        section = routing["capacity"]
        lines += [
            "",
            f"Token slots past their expert's capacity (Switch/GShard) over {capacity.batches_of(section)}; "
            f"{capacity.replication(section)}.",
            "",
            "| capacity factor | dropped, mean over layers | worst layer | dropped there |",
            "|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {s['factor']:g} | {s['mean']:.1%} | {s['worst_layer']} | {s['worst']:.1%} |"
            for s in capacity.summary(section)
        ]
    if routing["js_divergence"]:
        lines += [
            "",
            f"| language | JS divergence of its routing from {routing['divergence_from']} (mean over layers) |",
            "|---|---:|",
        ]
        lines += [f"| {name} | {numbers.metric(sum(v) / len(v))} |" for name, v in routing["js_divergence"].items()]
    return lines


def _example(counts: dict) -> str:
    return next((name for name in counts if name != "default"), "default")


def _yaml(value) -> str:
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True).rstrip()
