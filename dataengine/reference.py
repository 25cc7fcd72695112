"""The recipe reference (docs/recipe-reference.md), rendered from the schema so it cannot drift."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

from dataengine.recipe import Recipe, unwrap

HEADER = """# Recipe reference

Generated from the schema in `dataengine/recipe/` by `dataengine reference`; a test keeps this
file equal to that output. Unknown keys are errors. Strings may use `${VAR}` or `${VAR:-default}`
to read the environment. Relative paths are taken from the recipe file's folder. A field marked
*output-neutral* cannot change a row or a weight: it is in no stage's cache key, so changing it on a finished
run reruns nothing.
"""


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation).replace("typing.", "")
    text = re.sub(r"dataengine\.recipe\.(\w+\.)*", "", text)  # dataengine.recipe.train.StudentConfig
    return text.replace("NoneType", "None").replace("None", "null").replace(" | ", " or ").replace("Literal", "one of ")


def _default(model: type[BaseModel], field: Any, is_block: bool) -> str:
    if field.is_required():
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):
        return "(block)"
    if value is None and not is_block and getattr(model, "unset_default", None):
        return model.unset_default
    return f"`{value!r}`" if value is not None else "`null`"


def _section(model: type[BaseModel], path: str, out: list[str]) -> None:
    out.append(f"\n## `{path}`\n")
    if model.__doc__ and model is not Recipe:
        out.append(" ".join(model.__doc__.split()) + "\n")
    out.append("| key | type | default | meaning |\n|---|---|---|---|")
    nested = []
    for name, field in model.model_fields.items():
        inner = unwrap(field.annotation)
        is_block = isinstance(inner, type) and issubclass(inner, BaseModel)
        desc = (field.description or "").replace("|", "\\|")
        marks = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if "output_neutral" in marks:
            desc += f" *(output-neutral: {marks['output_neutral']})*"
        key = field.alias or name  # `class`, where Python needs `class_`
        out.append(f"| `{key}` | {_type_name(field.annotation)} | {_default(model, field, is_block)} | {desc} |")
        if is_block:
            is_list = "list[" in str(field.annotation)
            nested.append((inner, f"{path}.{name}[]" if is_list else f"{path}.{name}"))
    for inner, sub in nested:
        _section(inner, sub, out)


def render() -> str:
    out = [HEADER]
    _section(Recipe, "recipe", out)
    return "\n".join(out).replace("`recipe.", "`").replace("## `recipe`", "## top level") + "\n"
