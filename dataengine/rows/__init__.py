"""The rows every stage passes on: their columns (listed once), parquet shards in and out, and the small
readings of a row that several stages make (its prompt, its answer, its group, its held-out draw).

A module per concern: `schema` (the columns), `shards` (writing and reading a stage's parquet shards), `sort`
(the external sort), `ids` (the held-out split and the keys of a set of rows), `text` (a row's question, answer,
language and token layout), `groups` (its kind/language group), `reasoning` (a thinking teacher's reasoning,
apart from its answer and back in it for training) and `files` (a sample of a row file, for validate). Import
from here: every function, class and schema is re-exported, but for two modules imported whole
(`from dataengine.rows import queries`): `frames` (a stage's rows as a polars LazyFrame) and `queries` (every
aggregate a renderer shows of them). The limits a test may lower
(`shards.ROW_GROUP_BYTES`, `sort.SPILL_ROWS`, ...) are not: they are read where they are defined, so patch
them there.
"""

from __future__ import annotations

from dataengine.rows.files import column_problems, sample_file
from dataengine.rows.groups import (
    Group,
    count_groups,
    group_counts,
)
from dataengine.rows.ids import (
    batch_key,
    held_out_ids,
    ids_key,
)
from dataengine.rows.reasoning import (
    THINK_CLOSE,
    THINK_OPEN,
    Reasoning,
    ReasoningFormat,
    reasoning_form,
    reasoning_reads,
    renders_reasoning,
    require_reasoning_template,
    split_reasoning,
    with_reasoning,
)
from dataengine.rows.schema import (
    CURATED_FEATURES,
    JUDGE_CRITERIA,
    KEPT_FEATURES,
    PREFERENCE_FEATURES,
    PUBLISHED_FEATURES,
    ROUTED_FEATURES,
    SAMPLE_FEATURES,
    SCORED_FEATURES,
)
from dataengine.rows.shards import (
    ShardWriter,
    conform,
    iter_rows,
    read_ids,
    read_matrices,
    read_parquet,
    read_rows,
    shard_files,
    stage_writer,
    write_parquet,
    write_shards,
)
from dataengine.rows.sort import (
    sorted_rows,
)
from dataengine.rows.text import (
    answer,
    conversation_ids,
    last_user_turn,
    primary_language,
    prompt_and_full_ids,
    prompt_key,
)

__all__ = [
    "THINK_CLOSE",
    "THINK_OPEN",
    "Reasoning",
    "ReasoningFormat",
    "reasoning_form",
    "reasoning_reads",
    "renders_reasoning",
    "require_reasoning_template",
    "split_reasoning",
    "with_reasoning",
    "column_problems",
    "sample_file",
    "CURATED_FEATURES",
    "Group",
    "JUDGE_CRITERIA",
    "KEPT_FEATURES",
    "PREFERENCE_FEATURES",
    "PUBLISHED_FEATURES",
    "ROUTED_FEATURES",
    "SAMPLE_FEATURES",
    "SCORED_FEATURES",
    "ShardWriter",
    "answer",
    "batch_key",
    "conform",
    "count_groups",
    "group_counts",
    "held_out_ids",
    "ids_key",
    "iter_rows",
    "last_user_turn",
    "primary_language",
    "prompt_and_full_ids",
    "conversation_ids",
    "prompt_key",
    "read_ids",
    "read_matrices",
    "read_parquet",
    "read_rows",
    "shard_files",
    "sorted_rows",
    "stage_writer",
    "write_parquet",
    "write_shards",
]
