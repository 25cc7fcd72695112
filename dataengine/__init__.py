"""dataengine's public API: what a pipeline, stage or filter of your own imports (docs/extending.md).

Everything here keeps its name and meaning within an API version; `API_VERSION` changes when one of them does.
Modules under `dataengine.*` that are not named here are the engine's own and may change at any release.

Names are imported on first use, so `import dataengine` stays cheap (the stages pull in datatrove and torch).
"""

from __future__ import annotations

import importlib
from typing import Any

API_VERSION = 1

_WHERE = {
    # pipelines
    "Pipeline": "dataengine.pipeline",
    "NextRound": "dataengine.pipeline",
    "add_round": "dataengine.generate.top_up",
    # stages
    "Stage": "dataengine.stage",
    "StageResult": "dataengine.stage",
    "RunContext": "dataengine.stage",
    "StageConfig": "dataengine.recipe",
    "Recipe": "dataengine.recipe",
    "Manifest": "dataengine.manifest",
    "fingerprint_files": "dataengine.manifest",
    "resolve_path": "dataengine.recipe",
    "UserError": "dataengine.errors",
    "StageError": "dataengine.errors",
    # rows: a stage folder is parquet shards; these read and write them
    "iter_rows": "dataengine.rows",
    "read_rows": "dataengine.rows",
    "read_ids": "dataengine.rows",
    "shard_files": "dataengine.rows",
    "stage_writer": "dataengine.rows",
    "answer": "dataengine.rows",
    "last_user_turn": "dataengine.rows",
    "SAMPLE_FEATURES": "dataengine.rows",
    "CURATED_FEATURES": "dataengine.rows",
    "KEPT_FEATURES": "dataengine.rows",
    # the stages dataengine ships, for pipelines of your own
    "GenerateStage": "dataengine.generate.stage",
    "IngestStage": "dataengine.ingest.stage",
    "CurateStage": "dataengine.curate.stage",
    "JudgeStage": "dataengine.judge.stage",
    "RouteStage": "dataengine.route.stage",
    "BalanceStage": "dataengine.balance.stage",
    "ScoreStage": "dataengine.score.stage",
    "TrainStage": "dataengine.train.stage",
    "EvaluateStage": "dataengine.train.evaluate_stage",
    "PublishStage": "dataengine.publish.stage",
}

__all__ = ["API_VERSION", *_WHERE]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'dataengine' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
