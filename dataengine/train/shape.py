"""The shape of where a student starts, read from a config.json alone, and the prune knobs checked against it
at validation: layer indices, how many layers to keep, MLP channels. No weights are loaded and nothing is
downloaded or built: a Hub id, or a builtin teacher not built on this machine yet, is not checked here (the
train stage says what is wrong when it prunes)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dataengine.experts.routers import moe_dims
from dataengine.recipe import BUILTIN_PREFIX, PruneConfig, Recipe, StudentConfig, resolve_path

# a `model:` value that is a local folder (anything else is a Hub id or builtin:<name>)
LOCAL = ("/", "./", "../", "~")


@dataclass(frozen=True)
class Shape:
    label: str  # what the start is, for messages
    layers: int | None  # decoder layers
    width: int | None  # MLP channels of every layer (intermediate_size) of a dense start
    experts: int | None  # experts per MoE layer; None for a dense start


def model_config(model: str, recipe: Recipe, base_dir: Path) -> dict | None:
    """The (text) config of a `model:` value that is on this machine: a local folder's config.json, or a builtin
    teacher's once it is built; None for a Hub id and for what is not there."""
    if model.startswith(BUILTIN_PREFIX):
        from dataengine.teacher.builtin import BUILTIN_MODELS, builtin_model_dir

        name = model.removeprefix(BUILTIN_PREFIX)
        if name not in BUILTIN_MODELS:
            return None  # pipeline.name_problems says so
        folder = builtin_model_dir(name, recipe.teacher.builtin)
    elif model.startswith(LOCAL):
        folder = resolve_path(model, base_dir)
    else:
        return None
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    text = (config.get("text_config") or config) if isinstance(config, dict) else None  # multimodal: the LM's
    return text if isinstance(text, dict) else None


def _int(config: dict, key: str) -> int | None:
    value = config.get(key)
    return value if isinstance(value, int) and value > 0 else None


def start_shape(student: StudentConfig, where: str, recipe: Recipe, base_dir: Path) -> Shape | str | None:
    """The shape the student starts from, a problem with that start (as a message), or None where its config
    is not on this machine."""
    teacher = recipe.teacher.model
    if student.model is not None:
        config = model_config(student.model, recipe, base_dir)
        if config is None:
            return None
        dims = moe_dims(config)
        experts = dims[0] if dims else None
        width = None if experts else _int(config, "intermediate_size")
        return Shape(student.model, _int(config, "num_hidden_layers"), width, experts)
    config = model_config(teacher, recipe, base_dir)
    if config is None:
        return None
    if student.from_teacher is None:  # prune alone: the builtin teacher's dense parent, its shape
        return Shape(
            f"{teacher}'s dense parent", _int(config, "num_hidden_layers"), _int(config, "intermediate_size"), None
        )
    from dataengine.train.merge import DENSE_SIBLING

    if moe_dims(config) is None:
        return f"{where}.from_teacher: the teacher {teacher} has no experts to merge (no experts in its config)"
    model_type = config.get("model_type")
    keep = student.from_teacher.keep_experts
    if model_type not in DENSE_SIBLING:
        # keeping experts slices the same fused expert weights and router rows that merging reads
        made = "keeping experts" if keep is not None else "merging experts"
        return (
            f"{where}.from_teacher: {made} supports {', '.join(sorted(DENSE_SIBLING))} teachers; "
            f"{teacher} is {model_type}"
        )
    if keep is not None:
        experts = moe_dims(config)[0]
        if keep >= experts:
            return (
                f"{where}.from_teacher.keep_experts: {keep}, the teacher {teacher} has {experts} experts per layer: "
                "give fewer"
            )
        return Shape(f"{teacher} with {keep} of its {experts} experts", _int(config, "num_hidden_layers"), None, keep)
    width = _int(config, DENSE_SIBLING[model_type][1])
    return Shape(f"{teacher} with its experts merged", _int(config, "num_hidden_layers"), width, None)


def prune_problems(prune: PruneConfig, shape: Shape, where: str) -> list[str]:
    """The prune knobs of one start against its shape."""
    problems = []
    at, n = f"{where}.prune", shape.layers
    if n is not None and prune.layers is not None and (beyond := sorted(i for i in prune.layers if i >= n)):
        which = f"layer {beyond[0]} does not exist" if len(beyond) == 1 else f"layers {beyond} do not exist"
        problems.append(f"{at}.layers: {which}: the start ({shape.label}) has {n} layers (0-{n - 1})")
    if n is not None and prune.keep is not None and prune.keep > n:
        problems.append(f"{at}.keep: {prune.keep} layers to keep, the start ({shape.label}) has {n}")
    if n is not None and prune.keep_every is not None and prune.keep_every > n:
        problems.append(
            f"{at}.keep_every: {prune.keep_every} is more than the {n} layers of the start ({shape.label}): "
            f"give at most {n}"
        )
    size = prune.intermediate_size
    if size is not None and shape.experts:
        problems.append(
            f"{at}.intermediate_size: the start ({shape.label}) is a mixture of {shape.experts} experts per layer: "
            "width pruning narrows a dense gated MLP (start `from_teacher` to merge the experts first)"
        )
    elif size is not None and shape.width is not None and size >= shape.width:
        problems.append(
            f"{at}.intermediate_size: {size}, the start's ({shape.label}) MLPs have {shape.width} channels: give fewer"
        )
    return problems


def shape_problems(recipe: Recipe, base_dir: Path) -> list[str]:
    """Every start's prune knobs (the student's, each compared init's) against the start's config, where that
    config is on this machine."""
    train = recipe.train
    if train is None:
        return []
    starts = [("train.student", train.student)]
    starts += [(f"train.evaluate.compare_inits[{i}]", init) for i, init in enumerate(train.evaluate.compare_inits)]
    problems = []
    for where, student in starts:
        if student.prune is None and student.from_teacher is None:
            continue
        shape = start_shape(student, where, recipe, base_dir)
        if isinstance(shape, str):
            problems.append(shape)
        elif shape is not None and student.prune is not None:
            problems += prune_problems(student.prune, shape, where)
    return problems
