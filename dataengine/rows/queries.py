"""Every aggregate a renderer shows of a run's rows, as a named query over polars LazyFrames (`frames.scan` of a stage
folder): rows per kind/language group and the funnel of them through the stages, answer lengths, near-duplicate
cluster sizes, the teacher's own pass rate and language fidelity, a top-up round's shortfall per group, the card's
languages, teacher revisions and rows per config and split, the answer tokens of scored rows, the reasoning
lengths of a thinking teacher's rows and the turns of conversations.

The run's facts (facts.py: the report, `dataengine status`, `dataengine rows --against`), the card, top-up and the
benches call these; none of them loops over rows in Python. Each query reads only the columns it needs and aggregates
on polars' streaming engine, so over a million rows it holds what it returns (4 bytes a row for the answer lengths, a
few numbers for the rest) and the ids a join compares.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import polars as pl

from dataengine.rows.schema import CURATED_FEATURES

STREAMING = "streaming"  # polars' engine that reads and aggregates the shards a morsel at a time
# the polars type of every column a curated row may have: a shard of an older run reads as one
ROW_TYPES = pl.DataFrame(CURATED_FEATURES.arrow_schema.empty_table()).schema


def columns(rows: pl.LazyFrame | None, names: Sequence[str]) -> pl.LazyFrame:
    """`names` of `rows`, typed as a curated row's: null where a run of an older version lacks one, no rows for
    None (a stage with no output)."""
    if rows is None:
        return pl.LazyFrame(schema={name: ROW_TYPES[name] for name in names})
    have = rows.collect_schema()
    # added to the rows, not selected alone: a select of literals only would be one row
    missing = [pl.lit(None, ROW_TYPES[name]).alias(name) for name in names if name not in have]
    return rows.with_columns(missing).select(pl.col(name).cast(ROW_TYPES[name]) for name in names)


def among(rows: pl.LazyFrame, ids: pl.LazyFrame) -> pl.LazyFrame:
    """The rows whose id `ids` holds (a later stage kept them)."""
    return rows.join(ids.select("id"), on="id", how="semi")


def without(rows: pl.LazyFrame, ids: pl.LazyFrame) -> pl.LazyFrame:
    """The rows whose id `ids` does not hold (a student held them out)."""
    return rows.join(ids.select("id"), on="id", how="anti")


def rows_per_group(rows: pl.LazyFrame) -> pl.LazyFrame:
    """Rows per kind/language group: kind, language, rows."""
    return rows.group_by("kind", "language").agg(pl.len().alias("rows"))


def funnel(steps: dict[str, pl.LazyFrame]) -> dict[str, dict[str, int]]:
    """The rows each step holds per group, "kind/language" -> {step: rows}, steps in the order given: every group
    any step has, in group order, with 0 where a step has none of it. The steps are counted in one `collect_all`,
    where polars may read once what they share."""
    counts = pl.collect_all([rows_per_group(rows) for rows in steps.values()], engine=STREAMING)
    per_step = {
        step: {(kind, language): n for kind, language, n in counted.iter_rows()}
        for step, counted in zip(steps, counts, strict=True)
    }
    groups = sorted({group for counted in per_step.values() for group in counted})
    return {
        f"{kind}/{language}": {step: counted.get((kind, language), 0) for step, counted in per_step.items()}
        for kind, language in groups
    }


def answer_chars(rows: pl.LazyFrame | None) -> np.ndarray:
    """The length of every row's answer (the content of its last message) in characters, in shard order: 0 for a
    row with no message, as `rows.answer` reads it."""
    answer = pl.col("messages").list.last().struct.field("content")
    lengths = columns(rows, ["messages"]).select(answer.str.len_chars().fill_null(0).cast(pl.Int32))
    return lengths.collect(engine=STREAMING).to_series().to_numpy()


def reasoning_lengths(rows: pl.LazyFrame | None) -> dict[str, dict[str, float]]:
    """Per kind/language group of the rows a thinking teacher reasoned on: rows, mean and longest reasoning in
    tokens; no groups when no row has reasoning (or the rows are of a version before reasoning)."""
    reasoned = columns(rows, ["kind", "language", "reasoning_tokens"]).filter(pl.col("reasoning_tokens").is_not_null())
    tokens = pl.col("reasoning_tokens")
    per_group = reasoned.group_by("kind", "language").agg(
        pl.len().alias("rows"), tokens.mean().alias("mean"), tokens.max().alias("max")
    )
    return {
        f"{kind}/{language}": {"rows": rows, "mean_tokens": mean, "max_tokens": longest}
        for kind, language, rows, mean, longest in per_group.sort("kind", "language")
        .collect(engine=STREAMING)
        .iter_rows()
    }


def conversation_turns(rows: pl.LazyFrame | None) -> dict[str, dict[int, int]]:
    """Per kind/language group that holds a conversation of several assistant turns: rows by their number of
    assistant turns; no groups when every row is one turn."""
    turns = pl.col("messages").list.eval(pl.element().struct.field("role") == "assistant").list.sum()
    counted = (
        columns(rows, ["kind", "language", "messages"])
        .group_by("kind", "language", turns.alias("turns"))
        .agg(pl.len().alias("rows"))
        .sort("kind", "language", "turns")
        .collect(engine=STREAMING)
    )
    several = {(k, lang) for k, lang, n, _ in counted.iter_rows() if n is not None and n > 1}
    out: dict[str, dict[int, int]] = {}
    for kind, language, n, rows_ in counted.iter_rows():
        if (kind, language) in several and n is not None:  # a row without messages has no turns
            out.setdefault(f"{kind}/{language}", {})[int(n)] = rows_
    return out


def cluster_sizes(kept: pl.LazyFrame | None) -> dict[int, int]:
    """Near-duplicate cluster size -> kept rows, smallest first; a row dedup never clustered is a cluster of 1."""
    size = pl.col("dedup_cluster_size").fill_null(1)
    counted = columns(kept, ["dedup_cluster_size"]).group_by(size).agg(pl.len()).sort("dedup_cluster_size")
    return dict(counted.collect(engine=STREAMING).iter_rows())


def primary_language(tag: pl.Expr) -> pl.Expr:
    """`rows.primary_language` over a column: the language subtag of a BCP-47 code, lower case (pt-BR -> pt)."""
    return tag.str.split("-").list.first().str.to_lowercase()


def teacher_quality(*rows: pl.LazyFrame | None) -> dict[str, float | None]:
    """The evaluation's answer checks on the teacher's answers as curation judged them (its kept and rejected rows):
    code rows whose tests passed over code rows whose tests ran; chat rows detected in the language asked over chat
    rows whose language was detected (an empty detection is none). None where no row reached a check."""
    code = (pl.col("kind") == "code") & pl.col("tests_passed").is_not_null()
    chat = (pl.col("kind") == "chat") & (pl.col("language_detected").fill_null("") != "")
    in_language = chat & (pl.col("language_detected") == primary_language(pl.col("language")))
    checked = ["kind", "language", "tests_passed", "language_detected"]
    sums = pl.concat([columns(frame, checked) for frame in rows]).select(
        tested=code.sum(),
        passed=(code & pl.col("tests_passed")).sum(),
        detected=chat.sum(),
        in_language=in_language.sum(),
    )
    n = sums.collect(engine=STREAMING).row(0, named=True)
    return {
        "code_pass_rate": n["passed"] / n["tested"] if n["tested"] else None,
        "language_fidelity": n["in_language"] / n["detected"] if n["detected"] else None,
    }


class Lengths(NamedTuple):
    """A series of answer lengths in a few numbers; p90 is the length 9 in 10 rows stay at or under (the ordered
    lengths' value at int(0.9 * rows))."""

    rows: int
    min: int
    median: float
    p90: int
    max: int


def length_summary(lengths: np.ndarray) -> Lengths:
    """`answer_chars` of one stage summarised for a table; the lengths must not be empty."""
    ordered = pl.Series(lengths).sort()
    rows = len(ordered)
    return Lengths(rows, ordered[0], ordered.median(), ordered[min(rows - 1, int(0.9 * rows))], ordered[-1])


def shortfall(groups: pl.LazyFrame, max_factor: float, enough: float) -> dict[str, int]:
    """Prompts a top-up round asks per short group, in the order given. `groups` holds a row per group: group,
    target, kept, made (rows generated) and rollouts (answers per prompt). A group is short when it kept less than
    `enough` of its target. The rows still missing are divided by the group's keep rate so far, at least
    1 / max_factor (a group where nothing survived asks max_factor times its shortfall), then by its rollouts."""
    short = pl.col("target") - pl.col("kept")
    made = pl.col("made").fill_null(0)
    rate = pl.max_horizontal(pl.when(made > 0).then(pl.col("kept") / made).otherwise(0.0), pl.lit(1.0 / max_factor))
    prompts = ((short / rate).ceil() / pl.col("rollouts")).ceil().cast(pl.Int64)
    # kept / target, not kept < enough * target: 0.55 * 100 is 55.00000000000001 in floats
    under = (pl.col("target") > 0) & (pl.col("kept") / pl.col("target") < enough)
    asked = groups.filter(under).select("group", prompts.alias("prompts"))
    return dict(asked.collect().iter_rows())


def languages(index: pl.LazyFrame) -> list[str]:
    """The language subtags of a dataset's rows, as the card lists them (its regions dropped, its case kept)."""
    subtags = index.select(pl.col("language").str.split("-").list.first().unique().sort())
    return subtags.collect(engine=STREAMING).to_series().to_list()


def revisions(index: pl.LazyFrame) -> list[str]:
    """The teacher revisions a dataset's rows record, sorted; rows that record none are left out."""
    named = index.select(pl.col("teacher_revision").unique().sort()).filter(pl.col("teacher_revision") != "")
    return named.collect(engine=STREAMING).to_series().to_list()


def split_counts(index: pl.LazyFrame, test_ids: pl.Series, by: str | None = None) -> list[tuple[str | None, int, int]]:
    """(value of `by`, rows, test rows) of a dataset's rows, by value in order; one line for every row when `by` is
    None. A test row is one whose id is one of `test_ids`."""
    tested = pl.col("id").is_in(test_ids.implode()).sum()
    if by is None:  # a line even for no rows
        counted = index.select(pl.lit(None, pl.String), pl.len(), tested)
    else:
        counted = index.group_by(by).agg(pl.len(), tested).sort(by)
    return list(counted.collect(engine=STREAMING).iter_rows())


def answer_tokens(scored: pl.LazyFrame) -> int:
    """Answer tokens of scored rows: each row's tokens after its prompt's."""
    tokens = (pl.col("token_ids").list.len() - pl.col("completion_start")).sum()
    return int(scored.select(tokens).collect(engine=STREAMING).item())
