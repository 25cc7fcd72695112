"""Loading a recipe: YAML with `${VAR}` interpolation, validated against the schema (with the blocks of the
user's stages, `recipe_schema`), every problem reported at once with its line in the file, the field as a dotted
path, the value given and what is allowed; unknown keys get a did-you-mean.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model

from dataengine.errors import RecipeError, UserError
from dataengine.recipe.model import Problems, Recipe
from dataengine.secrets import remember

_ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(value: Any, where: str, missing: list[str]) -> Any:
    """Replace ${VAR} and ${VAR:-default} in every string of the loaded YAML."""
    if isinstance(value, dict):
        return {k: interpolate(v, f"{where}.{k}" if where else str(k), missing) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, f"{where}[{i}]", missing) for i, v in enumerate(value)]
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                remember(name, os.environ[name])
                return os.environ[name]
            if default is not None:
                return default
            missing.append(
                f"{where}: environment variable ${{{name}}} is not set (use ${{{name}:-default}} for a fallback)"
            )
            return match.group(0)

        return _ENV_VAR.sub(sub, value)
    return value


def _node_line(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at `loc`, or of its nearest existing parent."""
    node, line = root, (root.start_mark.line + 1 if root is not None else None)
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            # the last, as YAML keeps it (a key given twice is reported on its own)
            pairs = [(k, v) for k, v in node.value if k.value == str(key)]
            if not pairs:
                return line
            key_node, node = pairs[-1]
            line = key_node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _model_at(loc: tuple[Any, ...], schema: type[Recipe]) -> type[BaseModel] | None:
    """The schema class that owns the mapping at `loc`, to suggest known keys."""
    model: Any = schema
    for key in loc:
        if isinstance(key, int):
            continue
        field = model.model_fields.get(str(key)) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        model = unwrap(field.annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def unwrap(annotation: Any) -> Any:
    """`X | None` and `list[X]` to X, to walk the schema."""
    for arg in getattr(annotation, "__args__", ()) or ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
        inner = unwrap(arg)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner
    return annotation


def _dotted(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc).replace(".[", "[")


def _describe(error: dict[str, Any], root: yaml.Node | None, schema: type[Recipe]) -> list[str]:
    """The lines of one pydantic error: one, or one per rule a validator found broken (`Problems`)."""
    loc = tuple(error["loc"])
    dotted = _dotted(loc) or "(top level)"
    line = _node_line(root, loc)
    at = f"line {line}: " if line else ""
    if isinstance(broken := (error.get("ctx") or {}).get("error"), Problems):
        return [f"{at}{dotted}: {problem}" for problem in broken.problems]
    return [_describe_one(error, loc, dotted, at, schema)]


def _describe_one(error: dict[str, Any], loc: tuple[Any, ...], dotted: str, at: str, schema: type[Recipe]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        owner = _model_at(loc[:-1], schema)
        known = sorted(f.alias or n for n, f in owner.model_fields.items()) if owner else []
        if owner and str(loc[-1]) in owner.renamed:
            return f"{at}{dotted}: renamed to {owner.renamed[str(loc[-1])]!r} (the library's own name)"
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
        suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
        return f"{at}{dotted}: unknown key{suggestion} (allowed: {', '.join(known)})"
    if kind == "missing":
        return f"{at}{dotted}: required field is missing"
    message = error["msg"].removeprefix("Value error, ")
    given = error.get("input")
    shown = "" if isinstance(given, dict | list) or given is None else f" (got {given!r})"
    return f"{at}{dotted}: {message}{shown}"


@cache
def _schema(blocks: tuple[tuple[str, type[BaseModel]], ...]) -> type[Recipe]:
    fields: dict[str, Any] = {}
    for name, config in blocks:
        if name in Recipe.model_fields:
            raise UserError(f"a stage of your own named {name!r} takes a block dataengine already has: rename it")
        fields[name] = (config | None, Field(None, description=f"the {name} stage's block ({config.__name__})"))
    return create_model("Recipe", __base__=Recipe, **fields)


def recipe_schema(blocks: Mapping[str, type[BaseModel]] | None = None) -> type[Recipe]:
    """The recipe's schema, with a block for each stage of the user's own that brings one (`Stage.config`)."""
    return _schema(tuple(sorted((blocks or {}).items()))) if blocks else Recipe


def parse_recipe(
    text: str,
    source: str = "<recipe>",
    base_dir: Path | None = None,
    blocks: Mapping[str, type[BaseModel]] | None = None,
) -> Recipe:
    """Parse and validate recipe YAML text, with the blocks of the user's stages (`recipe_schema`). Raises
    RecipeError listing every problem found."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(source, [f"{where}YAML syntax error: {problem}"]) from None
    if not isinstance(data, dict):
        raise RecipeError(source, ["the recipe must be a YAML mapping (key: value pairs) at the top level"])
    # every problem at once: keys given twice, unset variables, the schema, then (schema passed) the files
    problems = duplicate_keys(root)
    missing: list[str] = []
    data = interpolate(data, "", missing)
    problems += missing
    unset = {m.split(": ", 1)[0] for m in missing}  # where a ${VAR} is left: its schema error would say it again
    schema = recipe_schema(blocks)
    try:
        recipe = schema.model_validate(data)
    except ValidationError as exc:
        problems += [
            p for e in exc.errors() if _dotted(tuple(e["loc"])) not in unset for p in _describe(e, root, schema)
        ]
        raise RecipeError(source, problems) from None
    problems += [p for p in _check_paths(recipe, base_dir or Path.cwd()) if p.split(": ", 1)[0] not in unset]
    recipe = _with_absolute_source(recipe, base_dir or Path.cwd())
    if problems:
        raise RecipeError(source, problems, recipe=recipe)
    return recipe


def duplicate_keys(root: yaml.Node | None) -> list[str]:
    """Keys given twice in one mapping (YAML keeps the last silently), each with both lines."""
    problems: list[str] = []
    seen: set[int] = set()  # an alias is the node it names: walked once

    def walk(node: yaml.Node, where: str) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, f"{where}[{i}]")
        elif isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else None
                path = f"{where}.{name}" if where else str(name)
                if name is not None and key.tag != "tag:yaml.org,2002:merge":
                    line = key.start_mark.line + 1
                    if (key.tag, name) in first:
                        problems.append(f"line {line}: {path}: key given twice (first at line {first[key.tag, name]})")
                    else:
                        first[key.tag, name] = line
                walk(value, path if name is not None else where)

    if root is not None:
        walk(root, "")
    return problems


def _with_absolute_source(recipe: Recipe, base_dir: Path) -> Recipe:
    """teacher.builtin.source is read wherever the teacher is built, far from the recipe's folder."""
    builtin = recipe.teacher.builtin
    if builtin.source is None:
        return recipe
    builtin = builtin.model_copy(update={"source": str(resolve_path(builtin.source, base_dir))})
    return recipe.model_copy(update={"teacher": recipe.teacher.model_copy(update={"builtin": builtin})})


def _check_paths(recipe: Recipe, base_dir: Path) -> list[str]:
    """Files a recipe names must exist; relative paths are taken from the recipe's folder."""
    problems = []
    for i, src in enumerate(recipe.generate.sources if recipe.generate else []):
        if src.path is not None and not resolve_path(src.path, base_dir).is_file():
            problems.append(f"generate.sources[{i}].path: file not found: {resolve_path(src.path, base_dir)}")
    for i, src in enumerate(recipe.ingest.sources if recipe.ingest else []):
        if src.path is not None and not resolve_path(src.path, base_dir).exists():
            problems.append(f"ingest.sources[{i}].path: not found: {resolve_path(src.path, base_dir)}")
    if recipe.curate is not None:
        for i, folder in enumerate(recipe.curate.dedup.reference):
            if not resolve_path(folder, base_dir).is_dir():
                problems.append(f"curate.dedup.reference[{i}]: folder not found: {resolve_path(folder, base_dir)}")
        for i, bench in enumerate(recipe.curate.decontamination.files):
            if not resolve_path(bench.path, base_dir).is_file():
                problems.append(
                    f"curate.decontamination.files[{i}].path: file not found: {resolve_path(bench.path, base_dir)}"
                )
    source = recipe.teacher.builtin.source
    if source is not None and not resolve_path(source, base_dir).is_file():
        problems.append(f"teacher.builtin.source: file not found: {resolve_path(source, base_dir)}")
    elif source is not None and not source.endswith((".whl", ".gguf")):
        problems.append(f"teacher.builtin.source: {source!r} is neither a wheel (.whl) nor a .gguf file")
    model = recipe.teacher.model
    # A Hub id never starts with these; a path that does must be a model folder.
    if model.startswith(("/", "./", "../", "~")) and not resolve_path(model, base_dir).is_dir():
        problems.append(f"teacher.model: folder not found: {resolve_path(model, base_dir)}")
    student = recipe.train.student.model if recipe.train else None
    if student and student.startswith(("/", "./", "../", "~")) and not resolve_path(student, base_dir).is_dir():
        problems.append(f"train.student.model: folder not found: {resolve_path(student, base_dir)}")
    return problems


def resolve_path(path: str, base_dir: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (base_dir / p).resolve()


def load_recipe(path: str | Path, blocks: Mapping[str, type[BaseModel]] | None = None) -> Recipe:
    """Load a recipe file; relative paths inside it are resolved from its folder."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(str(path), ["file not found"])
    return parse_recipe(path.read_text(encoding="utf-8"), str(path), base_dir=path.parent.resolve(), blocks=blocks)
