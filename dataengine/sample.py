"""The sample schema shared by every stage (DESIGN.md, "The sample"): columns are added, never renamed."""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset, Features, List, Value, disable_progress_bars

SAMPLE_FEATURES = Features(
    {
        "id": Value("string"),
        "messages": List({"role": Value("string"), "content": Value("string")}),
        "kind": Value("string"),
        "language": Value("string"),
        "topic": Value("string"),
        "task": Value("string"),
        # provenance
        "teacher_model": Value("string"),
        "teacher_revision": Value("string"),
        "sampling": {"temperature": Value("float32"), "top_p": Value("float32"), "max_tokens": Value("int32")},
        "seed": Value("int64"),
        "rollout_index": Value("int32"),
        "finish_reason": Value("string"),
        "prompt_tokens": Value("int32"),
        "completion_tokens": Value("int32"),
        "instruction": Value("string"),
        "question_finish_reason": Value("string"),
        "run_id": Value("string"),
        "recipe_hash": Value("string"),
        "created_at": Value("string"),
        # code tasks, parsed from the structured answer
        "code_problem": Value("string"),
        "code_solution": Value("string"),
        "code_tests": Value("string"),
        "code_parse_error": Value("string"),
    }
)

# Curation adds quality signals, dedup clusters and, on rejected rows, why and where they were dropped.
CURATED_FEATURES = Features(
    {
        **SAMPLE_FEATURES,
        "language_detected": Value("string"),
        "language_confidence": Value("float32"),
        "tests_passed": Value("bool"),
        "test_runtime_s": Value("float32"),
        "test_output": Value("string"),
        "contaminated_by": Value("string"),
        "dedup_cluster_id": Value("string"),
        "dedup_cluster_size": Value("int32"),
        "drop_reason": Value("string"),
        "drop_step": Value("string"),
    }
)


def write_shards(
    rows: list[dict], folder: Path, split: str = "train", features: Features = SAMPLE_FEATURES
) -> list[Path]:
    """Write rows as `data/<split>-NNNNN-of-NNNNN.parquet`, the names `datasets` maps to a split."""
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    path = data / f"{split}-00000-of-00001.parquet"
    disable_progress_bars()  # a bar for one small file is noise in the run's output
    # from_dict for an empty list too: from_list([]) loses the columns, and the folder would not load
    columns = {name: [row.get(name) for row in rows] for name in features}
    Dataset.from_dict(columns, features=features).to_parquet(str(path))
    return [path]
