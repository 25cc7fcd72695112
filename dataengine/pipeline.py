"""A pipeline is a function `build(recipe, base_dir) -> Pipeline` that picks the stages a recipe runs and wires
them, folder to folder. `pipeline:` in a recipe names one of three ways:

- a pipeline dataengine ships: `generate`, `curate`, `distill` (the modules of the top-level `pipelines/`);
- a Python file, relative to the recipe's folder: `pipeline: my_curate.py` (its `build`);
- `module:function`, importable from the recipe's folder or the environment: `pipeline: mypkg.pipes:build`.

Only pipelines know which stage reads which other stage's output."""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import pkgutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import yaml
from pydantic import BaseModel

from dataengine.errors import RecipeError, UserError
from dataengine.manifest import Manifest
from dataengine.recipe import BUILTIN_PREFIX, Recipe, interpolate, resolve_path
from dataengine.recipe import load_recipe as recipe_file
from dataengine.stage import Stage, config_hash
from dataengine.stages import SHIPPED, all_stages, plugins
from dataengine.teacher.builtin import name_problem, weights_problem

SHIPPED_PACKAGE = "pipelines"

# After a pass over the stages: what to ask for in one more pass (a line for the log), or None when done.
NextRound = Callable[[Path, dict[str, Manifest]], str | None]


@dataclass
class Pipeline:
    stages: list[Stage]
    next_round: NextRound | None = None  # e.g. top-up: more prompts where curation fell short
    # the stage whose pass `next_round` reads: the rounds run the stages up to it, and the later stages (routing,
    # training) run once, on what the last round kept; None: after the whole pipeline
    round_after: str | None = None


Build = Callable[[Recipe, Path], Pipeline]


def shipped_pipelines() -> list[str]:
    package = importlib.import_module(SHIPPED_PACKAGE)
    return sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_"))


def is_shipped(name: str) -> bool:
    return "/" not in name and ":" not in name and not name.endswith(".py")


def _importable_from(folder: Path) -> None:
    """The recipe's folder first on sys.path, and left there: what a user's pipeline or stage imports lazily
    (inside `run`) finds its neighbours too. Stages run in this process; a custom filter, which datatrove's
    workers run, finds its module through `curate.filters.custom`'s own loader instead."""
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


def _from_file(path: Path) -> ModuleType:
    # a name of its own per file: two recipes' `pipeline.py` files must not share a module; loaded once per
    # version of the file (validate, plan and run each ask for it)
    name = f"dataengine_user_pipeline_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    stamp = path.stat().st_mtime_ns
    if (loaded := sys.modules.get(name)) is not None and getattr(loaded, "__dataengine_stamp__", None) == stamp:
        return loaded
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    module.__dataengine_stamp__ = stamp
    sys.modules[name] = module
    _importable_from(path.parent)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]  # half a module is not kept: the next load says what is wrong again
        raise
    return module


def _module(name: str, base_dir: Path) -> tuple[ModuleType, str]:
    """The module a `pipeline:` value names and its build function's name; ValueError with what is wrong."""
    if is_shipped(name):
        known = shipped_pipelines()
        if name not in known:
            hint = difflib.get_close_matches(name, known, n=1)
            extra = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ValueError(
                f"unknown pipeline {name!r}{extra} (shipped: {', '.join(known)}; or a .py file next to the recipe, "
                "or module:function)"
            )
        return importlib.import_module(f"{SHIPPED_PACKAGE}.{name}"), "build"
    if ":" in name:
        module_name, attr = name.split(":", 1)
        _importable_from(base_dir)
        return importlib.import_module(module_name), attr
    path = resolve_path(name, base_dir)
    if not path.is_file():
        raise ValueError(f"no pipeline file {name!r} (looked for {path})")
    return _from_file(path), "build"


def _load(name: str, base_dir: Path) -> Build:
    """The pipeline's build function; ValueError with what is wrong (for `pipeline: ...`)."""
    module, attr = _module(name, base_dir)
    build = getattr(module, attr, None)
    if not callable(build):
        raise ValueError(f"{name!r} has no function {attr!r}: a pipeline defines build(recipe, base_dir) -> Pipeline")
    return build


def user_stages(pipeline: str | None, base_dir: Path) -> list[type[Stage]]:
    """The stage classes of the user's own: installed plug-ins' (`stages.plugins`) and those the recipe's
    pipeline module holds (defined or imported there)."""
    classes = list(plugins())
    if pipeline and not is_shipped(pipeline):
        try:
            module, _ = _module(pipeline, base_dir)
        except Exception:  # name_problems says what is wrong with it
            module = None
        if module is not None:
            found = [v for v in vars(module).values() if isinstance(v, type) and Stage in v.__mro__]
            classes += [cls for cls in found if cls not in SHIPPED and cls not in classes]
    return classes


def stage_blocks(pipeline: str | None, base_dir: Path) -> dict[str, type[BaseModel]]:
    """The recipe blocks the stages of the user's own bring, each under its stage's name."""
    return {cls.name: cls.config for cls in user_stages(pipeline, base_dir) if getattr(cls, "config", None)}


def load_recipe(path: Path) -> Recipe:
    """A recipe file, validated with the blocks of the stages its pipeline and the installed plug-ins bring."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    except yaml.YAMLError:
        raw = None  # the recipe's own loader reports it, with its line
    # `pipeline: ${PIPE:-mine.py}` names the file once its variables are set (their problems are the loader's)
    name = interpolate(raw.get("pipeline"), "pipeline", []) if isinstance(raw, dict) else None
    base_dir = path.parent.resolve()
    blocks = stage_blocks(name if isinstance(name, str) else None, base_dir)
    try:
        return recipe_file(path, blocks=blocks)
    except RecipeError as exc:
        # one pass says everything: where the schema passed, what `validate` checks next (names, stages); where
        # it failed, the names read from the YAML itself
        extra = recipe_problems(exc.recipe, base_dir) if exc.recipe is not None else _raw_name_problems(raw, base_dir)
        # a value left as ${VAR} has its problem said once, by the variable's
        unset = {p.split(": ", 1)[0] for p in exc.problems if ": environment variable ${" in p}
        extra = [p for p in extra if p not in exc.problems and p.split(": ", 1)[0] not in unset]
        if not extra:
            raise
        raise RecipeError(exc.path, exc.problems + extra, recipe=exc.recipe) from None


def _raw_name_problems(raw: object, base_dir: Path) -> list[str]:
    """`name_problems` of a recipe whose schema failed, from its YAML: `pipeline:` and a builtin teacher's name,
    where each is a string with its variables set."""
    if not isinstance(raw, dict):
        return []
    teacher = raw.get("teacher")
    names = {
        "pipeline": raw.get("pipeline", "generate"),
        "model": teacher.get("model") if isinstance(teacher, dict) else None,
    }
    missing: list[str] = []
    names = interpolate(names, "", missing)
    pipeline, model = names["pipeline"], names["model"]
    problems = []
    if isinstance(pipeline, str) and not any(m.startswith("pipeline:") for m in missing):
        problems += _pipeline_problems(pipeline, base_dir)
    if isinstance(model, str) and not any(m.startswith("model:") for m in missing) and (problem := name_problem(model)):
        problems.append(f"teacher.model: {problem}")
    return problems


def build_pipeline(recipe: Recipe, base_dir: Path) -> Pipeline:
    try:
        pipeline = _load(recipe.pipeline, base_dir)(recipe, base_dir)
    except ValueError as exc:
        raise UserError(f"pipeline: {exc}") from exc
    if not isinstance(pipeline, Pipeline):
        raise UserError(f"pipeline: {recipe.pipeline!r} built a {type(pipeline).__name__}, not a dataengine.Pipeline")
    return pipeline


def name_problems(recipe: Recipe, base_dir: Path) -> list[str]:
    """The recipe names a pipeline and (for builtin:<name>) a teacher that exist: what every command needs."""
    problems = _pipeline_problems(recipe.pipeline, base_dir)
    if problem := name_problem(recipe.teacher.model):
        problems.append(f"teacher.model: {problem}")
    return problems


def _pipeline_problems(name: str, base_dir: Path) -> list[str]:
    try:
        _load(name, base_dir)
    except ValueError as exc:
        return [f"pipeline: {exc}"]
    except Exception as exc:  # the user's module itself failed to import: say which and why, not a traceback
        return [f"pipeline: {name!r} cannot be imported: {type(exc).__name__}: {exc}"]
    return []


def _needs(recipe: Recipe, base_dir: Path) -> list[str]:
    """What the recipe's pipeline needs of it: its module's optional `check(recipe) -> list[str]`."""
    try:
        module, _ = _module(recipe.pipeline, base_dir)
    except Exception:  # _pipeline_problems says what is wrong with it
        return []
    check = getattr(module, "check", None)
    if not callable(check):
        return []
    try:
        return list(check(recipe))
    except Exception as exc:  # the user's check itself broke: say where, not a traceback
        return [f"pipeline: {recipe.pipeline!r}'s check(recipe) failed: {type(exc).__name__}: {exc}"]


def _keys(recipe: Recipe, base_dir: Path) -> list[str]:
    """The pipeline builds, and each stage's key can be taken (a stage's `reads` names paths the recipe has):
    what `plan` and `run` do first, asked at validate instead of after generation."""
    try:
        stages = build_pipeline(recipe, base_dir).stages
    except UserError as exc:
        return [str(exc)]
    except Exception as exc:  # a stage's constructor refused the recipe
        return [f"pipeline: {recipe.pipeline!r} cannot be built: {type(exc).__name__}: {exc}"]
    problems = []
    for stage in stages:
        try:
            config_hash(stage, recipe)
        except KeyError as exc:
            problems.append(f"stage {stage.name!r}: `reads` names {exc.args[0]}")
        except OSError:
            continue  # a file it depends on is missing: the recipe's file checks say which
    return problems


def recipe_problems(recipe: Recipe, base_dir: Path) -> list[str]:
    """The names above and each kind of stage's own check of its block (shipped data, local tokenizers, the
    start's shape): the stages' checks read their blocks, not the pipeline, so they run whatever the names say."""
    kinds = [*all_stages(), *(cls for cls in user_stages(recipe.pipeline, base_dir) if cls not in plugins())]
    stage_checks = [p for stage in kinds for p in _checked(stage, recipe, base_dir)]
    names = name_problems(recipe, base_dir)
    needs = _needs(recipe, base_dir)
    # the pipeline is built only once the names and its needs are right: its stages assume them
    built = _keys(recipe, base_dir) if not names and not needs and not stage_checks else []
    return names + needs + stage_checks + built


def _checked(stage: type[Stage], recipe: Recipe, base_dir: Path) -> list[str]:
    try:
        return list(stage.check(recipe, base_dir))
    except Exception as exc:  # a stage of the user's own whose check broke: name it, no traceback
        return [f"stage {stage.name!r}: its check failed: {type(exc).__name__}: {exc}"]


def check_pipeline(recipe: Recipe, base_dir: Path) -> list[str]:
    """What the schema alone cannot see: `recipe_problems`, and last the builtin teacher's weights on this
    machine. No downloads, no writes."""
    problems = recipe_problems(recipe, base_dir)
    # last: the other problems are the recipe's, this one the machine's
    builtin = recipe.teacher.model.removeprefix(BUILTIN_PREFIX) if recipe.teacher.is_builtin else None
    if not problems and builtin and (problem := weights_problem(builtin, recipe.teacher.builtin)):
        problems.append(problem)
    return problems
