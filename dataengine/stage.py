"""The stage contract: what a stage declares, what it is given, what it returns.

A stage reads named inputs and writes named outputs, folders of the run, which the pipeline wires
(`TrainStage(recipe, base_dir, rows_from="scored")`) and the runner resolves and hands over:
`run(inputs, outputs, work, ctx)`. A stage never names another stage's folder. Its first output holds
the manifest (docs/design.md, "The stage contract"); the runner empties every output before a run.

A stage is done when its manifest's key still matches: the recipe blocks it reads (`reads`, less the fields
the schema marks output-neutral), the files it declares (`key_files`), its outside state (`state`), and its
inputs' manifests.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import BaseModel
from pydantic_core import to_jsonable_python
from rich.console import Console

from dataengine.manifest import Manifest, fingerprint_files
from dataengine.recipe import Recipe
from dataengine.results import StageStats

if TYPE_CHECKING:
    from dataengine.teacher.server import TeacherEndpoint


@dataclass
class StageResult:
    rows_in: int | None
    rows_out: int
    output_fingerprint: str
    drops: dict[str, int] = field(default_factory=dict)
    # what others read of it is typed (results.py); a stage of the user's own may give a plain dict
    stats: StageStats | dict = field(default_factory=dict)


@dataclass
class RunContext:
    """What every stage of a run shares: the recipe, the run's identity, its console and its teacher (our vLLM
    server or the recipe's endpoint, which restarts or waits when it is lost: `teacher.recover`)."""

    recipe: Recipe
    base_dir: Path  # folder of the recipe file: relative paths in it start there
    run_dir: Path
    console: Console
    run_id: str
    teacher: TeacherEndpoint
    teachers: list[TeacherEndpoint] = field(default_factory=list)  # the `endpoints` pool; teacher is the first

    def log(self, message: str) -> None:
        self.console.print(f"[dim]{message}[/dim]")

    def endpoints(self) -> list[TeacherEndpoint]:
        """Where generation and scoring tasks send their requests (task N: endpoints()[N % len])."""
        return self.teachers or [self.teacher]


class Stage(Protocol):
    """The contract. A stage class subclasses it to inherit the defaults below (reads nothing of the recipe, no
    outside files, no outside state, nothing to check beyond the schema, a one-line summary) and overrides what
    it has."""

    name: str
    inputs: Mapping[str, str]  # role -> folder under the run folder that another stage writes
    outputs: Mapping[str, str]  # role -> folder under the run folder it writes; the first holds the manifest
    # the recipe blocks it reads, dotted ("curate", "teacher.model"): its own block and what it truly shares;
    # its key is them less the fields the schema marks output-neutral (`recipe_key`)
    reads: Sequence[str] = ()
    # a stage of the user's own may bring a block of the recipe, its top-level key the stage's `name`: the
    # recipe validates it against this model like the shipped blocks (docs/extending.md)
    config: ClassVar[type[BaseModel] | None] = None

    def key_files(self) -> list[Path]:
        """Files outside the run its result depends on (prompt files, benchmarks, reference data)."""
        return []

    def outside(self) -> list[str]:
        """What it reads or writes outside the run folder (a teacher, prompt files, a publish target), for
        `dataengine plan`."""
        return []

    def state(self, run_dir: Path) -> str:
        """What else, outside the recipe, the stage's output depends on (e.g. top-up rounds); "" if nothing."""
        return ""

    @staticmethod
    def check(recipe: Recipe, base_dir: Path) -> list[str]:
        """Problems with the recipe that need the stage's shipped data or models; no downloads, no writes."""
        return []

    def run(self, inputs: dict[str, Path], outputs: dict[str, Path], work: Path, ctx: RunContext) -> StageResult: ...

    def summary(self, manifest: Manifest, outputs: dict[str, Path], console: Console) -> None:
        drops = ", ".join(f"{reason} {n}" for reason, n in sorted(manifest.drops.items()))
        console.print(f"{self.name}: {manifest.rows_out} rows" + (f" (dropped: {drops})" if drops else ""))


def config_hash(stage: Stage, recipe: Recipe) -> str:
    """The stage's cache key: the recipe blocks it reads, then the content of its files."""
    digest = hashlib.sha256(recipe_key(recipe, stage.reads, stage.name).encode())
    for path in stage.key_files():
        digest.update(fingerprint_files([path]).encode())
    return digest.hexdigest()[:16]


def recipe_key(recipe: Recipe, paths: Sequence[str], stage: str) -> str:
    """Hash of the recipe's blocks at dotted `paths` ("train.sft", "teacher.model") as `stage` sees them:
    without the fields the schema marks output-neutral, and, in the stage's own block, without the sub-blocks
    the schema marks as another stage's (`recipe.WHERE`, `recipe.stage_block`). Nobody lists what to leave
    out: the schema says it."""
    picked = {
        path: key_view(_at(recipe, path.split(".")), stage if path.split(".")[0] == stage else None) for path in paths
    }
    return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


def key_view(value: Any, owner: str | None = None) -> Any:
    """`value` as JSON, less the output-neutral fields and, when `owner` reads its own block, the sub-blocks
    of other stages (which make their own stage's key)."""
    if isinstance(value, BaseModel):
        kept = {}
        for name, info in type(value).model_fields.items():
            marks = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            if "output_neutral" in marks or (owner is not None and marks.get("stage", owner) != owner):
                continue
            if marks.get("keyed_when_set") and getattr(value, name) == info.get_default(call_default_factory=True):
                continue
            kept[name] = key_view(getattr(value, name), owner)
        return kept
    if isinstance(value, list | tuple):
        return [key_view(v, owner) for v in value]
    if isinstance(value, dict):
        return {str(k): key_view(v, owner) for k, v in value.items()}
    return to_jsonable_python(value)


def _at(recipe: Recipe, keys: list[str]) -> Any:
    value: Any = recipe
    for i, key in enumerate(keys):
        if value is None:  # an optional block this recipe leaves out
            return None
        if not isinstance(value, BaseModel) or key not in type(value).model_fields:
            raise KeyError(f"no recipe path {'.'.join(keys[: i + 1])!r}")
        value = getattr(value, key)
    return value
