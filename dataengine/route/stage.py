"""route: replay the curated rows (and the rejected ones) through the MoE teacher in transformers and record
which experts every answer token was routed to; write each row's routing signature and the run's routing
map.

Rows are batched by length; each batch's routing is saved under the work folder as it finishes, so a crash
re-routes nothing already routed.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from datasets import Features, List, Value
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from dataengine import numbers
from dataengine.atomic import write_atomic
from dataengine.errors import StageError
from dataengine.experts import maps, metrics
from dataengine.experts.routers import moe_dims
from dataengine.experts.vllm_payload import decode
from dataengine.manifest import Manifest, fingerprint_files
from dataengine.recipe import Recipe
from dataengine.rows import (
    CURATED_FEATURES,
    ROUTED_FEATURES,
    batch_key,
    iter_rows,
    prompt_and_full_ids,
    sorted_rows,
    stage_writer,
)
from dataengine.run_folder import ROUTING_MAP_FILE
from dataengine.stage import RunContext, Stage, StageResult
from dataengine.teacher.server import resolve_model

COLUMNS = ["id", "messages", "kind", "language", "topic", "teacher_routing"]
# a row waiting for its replay: what the map records of it, and its tokens
_REPLAY_FEATURES = Features(
    {
        **{name: CURATED_FEATURES[name] for name in COLUMNS if name != "teacher_routing"},
        "kept": Value("bool"),
        "token_ids": List(Value("int32")),
        "completion_start": Value("int32"),
        "tokens": Value("int32"),
    }
)


class RouteStage(Stage):
    name = "route"
    reads = ("route", "teacher.model", "teacher.revision", "teacher.builtin")

    def __init__(self, recipe: Recipe, base_dir: Path, rows_from: str, rejected_from: str | None = None) -> None:
        self.recipe = recipe
        self.base_dir = base_dir
        self.cfg = recipe.route
        self.inputs = {"rows": rows_from} | ({"rejected": rejected_from} if rejected_from else {})
        self.outputs = {"map": "routing"}

    @staticmethod
    def check(recipe: Recipe, base_dir: Path) -> list[str]:
        """A teacher in a local folder must be an MoE (a Hub id is checked when the stage loads it: validate
        makes no network call; the builtin teacher is one)."""
        if recipe.route is None or recipe.teacher.is_builtin:
            return []
        config = Path(recipe.teacher.model).expanduser() / "config.json"
        if config.is_file() and moe_dims(json.loads(config.read_text())) is None:
            return [
                f"route: teacher {recipe.teacher.model} is not a Mixture-of-Experts model (no experts in its config)"
            ]
        return []

    def run(self, inputs: dict[str, Path], outputs: dict[str, Path], work_dir: Path, ctx: RunContext) -> StageResult:
        teacher = self.recipe.teacher
        path = resolve_model(teacher, ctx.log)
        # the revision that wrote the answers (a builtin teacher is a local folder)
        revision = {} if teacher.is_builtin or teacher.revision is None else {"revision": teacher.revision}
        experts, top_k = _moe_config(path, revision)
        cfg = self.cfg
        builder = maps.MapBuilder(
            experts, top_k, cfg.cold_below, cfg.reference_language, cfg.capacity_factors, cfg.capacity_batch_tokens
        )
        counted = Counter()  # rows written, by who routed them; kept rows; answer tokens

        def add(row: dict, chosen: np.ndarray, entropy: float | None, margin: float | None, source: str) -> None:
            try:
                signature = builder.add(
                    maps.RoutedRow(row["id"], row["kind"], row["language"], row["topic"], row["kept"], chosen)
                )
            except ValueError as exc:
                raise StageError(f"route: {exc}: vLLM's routing (generation) and the replay's disagree") from exc
            # straight to the shards: a signature is layers x experts, ~24 KB a row for a Qwen3-30B-A3B teacher
            writer.write(
                {
                    "id": row["id"],
                    "kind": row["kind"],
                    "language": row["language"],
                    "topic": row["topic"],
                    "kept": row["kept"],
                    "answer_tokens": len(chosen),
                    "routing_signature": signature.astype(np.int32),
                    "router_entropy": entropy,
                    "router_margin": margin,
                    "routed_by": source,
                }
            )
            counted.update({source: 1, "kept": row["kept"], "answer_tokens": len(chosen)})

        # rows whose answers came back from vLLM with their routing need no replay; they are read a batch at a
        # time and their per-token routing let go once counted
        sources = [(inputs["rows"], True)] + ([(inputs["rejected"], False)] if "rejected" in inputs else [])
        rows_in = to_replay = 0
        drops: dict[str, int] = {}

        def uncaptured() -> Iterator[dict]:  # the rows to replay, read again rather than held
            for folder, kept in sources:
                for row in iter_rows(folder, COLUMNS):
                    if not row.pop("teacher_routing", None):
                        yield dict(row, kept=kept)

        # the shards hold the rows captured from vLLM first, in their input's order, then the replayed ones
        with stage_writer(outputs["map"], ROUTED_FEATURES) as writer:
            for folder, kept in sources:
                for row in iter_rows(folder, COLUMNS):
                    rows_in += 1
                    if routing := row.pop("teacher_routing", None):
                        add(dict(row, kept=kept), _captured(row["id"], routing, top_k), None, None, "vllm")
                    else:
                        to_replay += 1
            if to_replay:
                replayed = self._replay(uncaptured(), to_replay, path, revision, work_dir, ctx, drops)
                for row, chosen, entropy, margin in replayed:
                    add(row, chosen, entropy, margin, "replay")
        routing_map = builder.build()
        routing_map["routed_by"] = {"vllm": counted["vllm"], "replay": counted["replay"]}
        write_atomic(outputs["map"] / ROUTING_MAP_FILE, json.dumps(routing_map, indent=1))
        return StageResult(
            rows_in=rows_in,
            rows_out=writer.rows,
            output_fingerprint=fingerprint_files([*writer.paths, outputs["map"] / ROUTING_MAP_FILE]),
            drops=drops,
            stats={
                "layers": routing_map["num_layers"],
                "experts": experts,
                "top_k": top_k,
                "kept_rows": counted["kept"],
                "answer_tokens": counted["answer_tokens"],
                "cold_experts": sum(len(c) for c in routing_map["overall"]["cold"]),
                "routed_by_vllm": counted["vllm"],
                "replayed": counted["replay"],
            },
        )

    def _replay(
        self,
        rows: Iterable[dict],
        count: int,
        path: str,
        revision: dict,
        work_dir: Path,
        ctx: RunContext,
        drops: dict[str, int],
    ) -> Iterator[tuple[dict, np.ndarray, float, float]]:
        """(row, choices, router entropy, margin) of every row short enough to replay (`count` of them given),
        batch by batch; the rows too long are counted in `drops`. Each batch's routing is saved as it finishes:
        a rerun replays nothing saved."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from dataengine.route.replay import moe_shape, route_batch

        # a GPU when there is one (bf16, as the teacher is served); fp32 on CPU, where bf16 matmuls are slow
        device, dtype = ("cuda", torch.bfloat16) if torch.cuda.is_available() else ("cpu", torch.float32)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, **revision)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **revision).to(device).eval()
        except OSError as exc:
            raise StageError(f"route: cannot load the teacher {path} in transformers: {exc}") from exc
        try:
            moe_shape(model)
        except ValueError as exc:
            raise StageError(f"route: {exc}") from exc
        limit = getattr(model.config.get_text_config(), "max_position_embeddings", None)

        def tokenized() -> Iterator[dict]:
            for row in rows:
                ids, start = prompt_and_full_ids(tokenizer, row["messages"])
                if limit is not None and len(ids) > limit:
                    drops["too_long_to_route"] = drops.get("too_long_to_route", 0) + 1
                else:
                    yield dict(row, token_ids=ids, completion_start=start, tokens=len(ids))

        # shortest first, so a batch pads little; sorted through spilled runs, not in memory
        todo = sorted_rows(tokenized(), ["tokens", "id"], _REPLAY_FEATURES, work_dir / "sort")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        saved = work_dir / "batches"
        saved.mkdir(parents=True, exist_ok=True)
        with Progress(console=ctx.console, transient=True) as progress:
            task = progress.add_task("routing", total=count)
            while batch := list(itertools.islice(todo, self.cfg.batch_size)):
                # the precision too: a resume on a GPU node must not mix its bf16 routing with a CPU node's fp32
                file = saved / f"{batch_key([str(dtype), *(row['id'] for row in batch)])}.npz"
                if not file.is_file():
                    _save(file, route_batch(model, [(row["token_ids"], row["completion_start"]) for row in batch], pad))
                choices, entropy, margin = _load(file)
                yield from zip(batch, choices, entropy, margin, strict=True)
                progress.update(task, total=count - sum(drops.values()))  # known once every row is tokenized
                progress.advance(task, len(batch))

    def summary(self, manifest: Manifest, outputs: dict[str, Path], console: Console) -> None:
        routing_map = json.loads((outputs["map"] / ROUTING_MAP_FILE).read_text())
        console.print(balance_table(routing_map))
        if line := routed_by(routing_map):
            console.print(line)
        console.print(f"map: {outputs['map'] / ROUTING_MAP_FILE} (dataengine experts RUN_DIR shows all of it)")


def routed_by(routing_map: dict) -> str:
    """Where the map's routing came from ("" for a map written before generation could return it)."""
    by = routing_map.get("routed_by")
    return (
        f"routing of {by['vllm']} rows returned by the teacher's vLLM with their answers, "
        f"{by['replay']} replayed in transformers"
        if by
        else ""
    )


def balance_table(routing_map: dict) -> Table:
    """Per MoE layer: how evenly the kept rows load the experts, and which are cold."""
    overall = routing_map["overall"]
    table = Table(
        title=f"expert load of {overall['rows']} kept rows, {overall['tokens']} answer tokens "
        f"({routing_map['num_experts']} experts, top-{routing_map['top_k']})",
        title_justify="left",
    )
    for column in ("layer", "CV", "max/mean", "balancedness", "Gini", "cold experts"):
        table.add_column(column, justify="left" if column == "layer" else "right")
    for layer in range(routing_map["num_layers"]):
        table.add_row(
            str(layer),
            numbers.metric(overall["cv"][layer]),
            numbers.metric(overall["max_over_mean"][layer]),
            numbers.metric(overall["balancedness"][layer]),
            numbers.metric(overall["gini"][layer]),
            ", ".join(map(str, overall["cold"][layer])) or numbers.NOT_APPLICABLE,
        )
    return table


def _moe_config(path: str, revision: dict) -> tuple[int, int]:
    """The teacher's (experts, experts per token), from its config alone."""
    from transformers import AutoConfig

    try:
        dims = moe_dims(AutoConfig.from_pretrained(path, **revision).to_dict())
    except OSError as exc:
        raise StageError(f"route: cannot read the teacher's config {path}: {exc}") from exc
    if dims is None:
        raise StageError(f"route: teacher {path} is not a Mixture-of-Experts model (no experts in its config)")
    return dims


def _captured(row_id: str, routing: str, top_k: int) -> np.ndarray:
    """[answer tokens - 1, layers, top_k] experts of a row whose answer came back from vLLM with its routing."""
    try:
        chosen = decode(routing)
    except ValueError as exc:
        raise StageError(f"route: row {row_id}: teacher_routing: {exc}") from exc
    if chosen.shape[2] != top_k:
        raise StageError(
            f"route: row {row_id} was routed to {chosen.shape[2]} experts per token, the teacher's config "
            f"says {top_k}: the rows were generated by another model"
        )
    return chosen.astype(np.int16)


def _save(file: Path, results) -> None:
    """One batch's routing, whole or not at all (a crash mid-write leaves no half file to trust)."""
    lengths = np.array([len(r.choices) for r in results])
    summary = np.array([metrics.entropy_and_margin(r.probs) for r in results]).reshape(-1, 2)
    tmp = file.with_suffix(".tmp.npz")
    np.savez(tmp, lengths=lengths, choices=np.concatenate([r.choices for r in results]), summary=summary)
    tmp.rename(file)


def _load(file: Path) -> tuple[list[np.ndarray], list[float], list[float]]:
    data = np.load(file)
    bounds = np.cumsum(data["lengths"])[:-1]
    return np.split(data["choices"], bounds), data["summary"][:, 0].tolist(), data["summary"][:, 1].tolist()
