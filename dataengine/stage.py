"""The stage contract: what a stage declares, what it is given, what it returns.

A stage reads named inputs and writes named outputs, folders of the run, which the pipeline wires
(`TrainStage(recipe, base_dir, rows_from="scored")`) and the runner resolves and hands over:
`run(inputs, outputs, work, ctx)`. A stage never names another stage's folder. Its first output holds
the manifest (docs/design.md, "The stage contract"); the runner empties every output before a run.

A stage is done when its manifest's key still matches: the recipe paths it declares (`key_paths`), the
files it declares (`key_files`), its outside state (`state`), and its inputs' manifests.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from rich.console import Console

from dataengine.manifest import Manifest, fingerprint_files
from dataengine.recipe import Recipe

if TYPE_CHECKING:
    from dataengine.teacher.server import TeacherEndpoint


@dataclass
class StageResult:
    rows_in: int | None
    rows_out: int
    output_fingerprint: str
    drops: dict[str, int] = field(default_factory=dict)
    stats: dict = field(default_factory=dict)


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
    """The contract. A stage class subclasses it to inherit the defaults below (no outside files, no outside
    state, nothing to check beyond the schema) and overrides what it has."""

    name: str
    inputs: Mapping[str, str]  # role -> folder under the run folder that another stage writes
    outputs: Mapping[str, str]  # role -> folder under the run folder it writes; the first holds the manifest
    key_paths: Sequence[str]  # recipe paths its result depends on (see `recipe_key`)

    def key_files(self) -> list[Path]:
        """Files outside the run its result depends on (prompt files, benchmarks, reference data)."""
        return []

    def state(self, run_dir: Path) -> str:
        """What else, outside the recipe, the stage's output depends on (e.g. top-up rounds); "" if nothing."""
        return ""

    @staticmethod
    def check(recipe: Recipe, base_dir: Path) -> list[str]:
        """Problems with the recipe that need the stage's shipped data or models; no downloads, no writes."""
        return []

    def run(self, inputs: dict[str, Path], outputs: dict[str, Path], work: Path, ctx: RunContext) -> StageResult: ...

    def summary(self, manifest: Manifest, outputs: dict[str, Path], console: Console) -> None: ...


def config_hash(stage: Stage, recipe: Recipe) -> str:
    """The stage's cache key: its recipe paths, then the content of its files."""
    digest = hashlib.sha256(recipe_key(recipe, stage.key_paths).encode())
    for path in stage.key_files():
        digest.update(fingerprint_files([path]).encode())
    return digest.hexdigest()[:16]


def recipe_key(recipe: Recipe, paths: Sequence[str]) -> str:
    """Hash of the recipe at dotted `paths` ("train.sft", "teacher.model"); a path written "-a.b" leaves
    a.b out of what the paths before it selected."""
    data = recipe.model_dump(mode="json")
    picked: dict[str, Any] = {}
    for path in paths:
        if path.startswith("-"):
            _drop(picked, path[1:].split("."))
        else:
            picked[path] = _at(data, path.split("."))
    return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


def _at(data: Any, keys: list[str]) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            raise KeyError(f"no recipe path {'.'.join(keys)!r}")
        data = data[key]
    return data


def _drop(picked: dict[str, Any], keys: list[str]) -> None:
    """Remove a.b.c from whichever picked entry holds it ("a", "a.b", ...): copies, never the dump itself."""
    for i in range(len(keys), 0, -1):
        head = ".".join(keys[:i])
        if head in picked:
            if i == len(keys):
                del picked[head]
                return
            picked[head] = _without(picked[head], keys[i:])
            return
    raise KeyError(f"-{'.'.join(keys)} removes nothing the paths before it selected")


def _without(value: Any, keys: list[str]) -> Any:
    if not isinstance(value, dict) or keys[0] not in value:
        return value  # e.g. an optional block that is null in this recipe
    if len(keys) == 1:
        return {k: v for k, v in value.items() if k != keys[0]}
    return {**value, keys[0]: _without(value[keys[0]], keys[1:])}
