"""The recipe schema: the single source of truth for every knob, and YAML loading with precise errors.

Every error names the field (as a dotted path), the line in the YAML file, the value given
and what is allowed. Unknown keys get a did-you-mean.

A module per concern: `base` (StrictModel, the output-neutral markers, shared value types), a module per block
(`teacher`, `executor`, `generate`, `curate`, `score`, `route`, `train`, `publish`, `schedule`), `model` (the
`Recipe` and its rules across blocks) and `loader` (YAML, `${VAR}`, errors, `parse_recipe`, `load_recipe`,
`recipe_schema`). Import from here: every name is re-exported.
"""

from __future__ import annotations

from dataengine.recipe.base import (
    ADDED,
    BUILTIN_PREFIX,
    LOGGING,
    PACE,
    WAIT,
    WHERE,
    FolderName,
    LanguageCode,
    StageConfig,
    StrictModel,
    http_url,
    stage_block,
)
from dataengine.recipe.curate import (
    BalanceConfig,
    BenchmarkFile,
    CodeCheckConfig,
    CurateConfig,
    CustomFilter,
    DecontaminationConfig,
    DedupConfig,
    FiltersConfig,
    FilterSwitch,
    JudgeConfig,
    LanguageCheckConfig,
    LengthConfig,
    MinhashSettings,
    PairsConfig,
    ProseQualityConfig,
    QuestionCheckConfig,
    RefusalConfig,
    snake_case,
)
from dataengine.recipe.executor import (
    ExecutorSettings,
    RaySettings,
    SlurmSettings,
)
from dataengine.recipe.generate import (
    ChatConfig,
    CodeConfig,
    GenerateConfig,
    LanguageQuota,
    MagpieConfig,
    MagpieLanguage,
    MathConfig,
    PromptSource,
    SamplingConfig,
    TopUpConfig,
)
from dataengine.recipe.ingest import ROW_FILES, IngestConfig, RowSource
from dataengine.recipe.loader import (
    duplicate_keys,
    interpolate,
    load_recipe,
    parse_recipe,
    recipe_schema,
    resolve_path,
    unwrap,
)
from dataengine.recipe.model import (
    Problems,
    Recipe,
)
from dataengine.recipe.publish import (
    PublishConfig,
    Target,
    parse_target,
)
from dataengine.recipe.route import (
    RouteConfig,
)
from dataengine.recipe.schedule import (
    ScheduleConfig,
    cron_problem,
)
from dataengine.recipe.score import (
    ScoreConfig,
)
from dataengine.recipe.teacher import (
    BuiltinTeacherOptions,
    RecoveryConfig,
    TeacherConfig,
    VLLMOptions,
)
from dataengine.recipe.train import (
    DISTILL_CONFIGS,
    DISTILL_KNOBS,
    DistillSettings,
    DPOSettings,
    EvaluateSettings,
    FromTeacherConfig,
    LaunchSettings,
    LoraSettings,
    PruneConfig,
    ReasoningFormat,
    SFTSettings,
    StudentConfig,
    TrainConfig,
    TrainerSettings,
)

__all__ = [
    "ADDED",
    "BUILTIN_PREFIX",
    "BalanceConfig",
    "BenchmarkFile",
    "BuiltinTeacherOptions",
    "ChatConfig",
    "CodeCheckConfig",
    "CodeConfig",
    "CurateConfig",
    "CustomFilter",
    "DISTILL_CONFIGS",
    "DISTILL_KNOBS",
    "DPOSettings",
    "DecontaminationConfig",
    "DedupConfig",
    "DistillSettings",
    "EvaluateSettings",
    "ExecutorSettings",
    "FilterSwitch",
    "FiltersConfig",
    "FolderName",
    "FromTeacherConfig",
    "GenerateConfig",
    "IngestConfig",
    "ROW_FILES",
    "RowSource",
    "JudgeConfig",
    "LOGGING",
    "LanguageCheckConfig",
    "LanguageCode",
    "LanguageQuota",
    "MagpieConfig",
    "MathConfig",
    "MagpieLanguage",
    "LaunchSettings",
    "LengthConfig",
    "LoraSettings",
    "MinhashSettings",
    "PACE",
    "PairsConfig",
    "Problems",
    "PromptSource",
    "ProseQualityConfig",
    "PruneConfig",
    "PublishConfig",
    "QuestionCheckConfig",
    "RaySettings",
    "Recipe",
    "RecoveryConfig",
    "RefusalConfig",
    "RouteConfig",
    "SFTSettings",
    "SamplingConfig",
    "ScheduleConfig",
    "ScoreConfig",
    "SlurmSettings",
    "StageConfig",
    "StrictModel",
    "StudentConfig",
    "Target",
    "TeacherConfig",
    "TopUpConfig",
    "TrainConfig",
    "ReasoningFormat",
    "TrainerSettings",
    "VLLMOptions",
    "WAIT",
    "WHERE",
    "cron_problem",
    "duplicate_keys",
    "http_url",
    "interpolate",
    "load_recipe",
    "parse_recipe",
    "parse_target",
    "recipe_schema",
    "resolve_path",
    "snake_case",
    "stage_block",
    "unwrap",
]
