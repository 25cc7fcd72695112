"""One training phase (SFT or a distillation method): recipe settings -> TRL config -> TRL trainer.

Each phase trains in its own folder under the train stage's work dir. Trainer checkpoints land
there every `save_steps`; a phase that crashed resumes from the last one, and a finished phase
leaves `final/` (model + tokenizer + phase.json) that the next phase starts from.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset

from dataengine.recipe import DistillSettings, SFTSettings, TrainerSettings
from dataengine.train.data import prompt_completion
from dataengine.train.offline_topk import OfflineTopKCollator, OfflineTopKTrainer

DONE = "phase.json"


def use_bf16(settings: TrainerSettings) -> bool:
    return settings.precision == "bf16" or (settings.precision == "auto" and torch.cuda.is_available())


def trainer_args(settings: TrainerSettings, out: Path) -> dict[str, Any]:
    """The TrainingArguments every TRL config shares, from the recipe's names (which are TRL's)."""
    return {
        "output_dir": str(out),
        "learning_rate": settings.learning_rate,
        "lr_scheduler_type": settings.lr_scheduler_type,
        "warmup_steps": settings.warmup_steps,
        "num_train_epochs": settings.num_train_epochs,
        "max_steps": settings.max_steps,
        "per_device_train_batch_size": settings.per_device_train_batch_size,
        "gradient_accumulation_steps": settings.gradient_accumulation_steps,
        "weight_decay": settings.weight_decay,
        "seed": settings.seed,
        "bf16": use_bf16(settings),
        "fp16": False,
        "gradient_checkpointing": settings.gradient_checkpointing,
        "logging_steps": settings.logging_steps,
        "save_strategy": "steps",
        "save_steps": settings.save_steps,
        "save_total_limit": 2,
        "report_to": [],
        "dataloader_num_workers": 0,
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
    """Save the trained model as a plain transformers folder (LoRA merged) and the phase's record."""
    final = out / "final"
    tmp = out / "final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model = trainer.model
    if hasattr(model, "merge_and_unload"):  # peft: the student ships as ordinary weights
        model = model.merge_and_unload()
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    record = {
        "steps": trainer.state.global_step,
        "seconds": round(time.time() - started, 2),
        "resumed_from": Path(resumed).name if resumed else None,
        "log_history": trainer.state.log_history,
        **extra,
    }
    (tmp / DONE).write_text(json.dumps(record, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def _train(trainer, out: Path, log: Callable[[str], None]) -> str | None:
    resumed = _last_checkpoint(out)
    if resumed:
        log(f"resuming from {resumed}")
    trainer.train(resume_from_checkpoint=resumed)
    return resumed


def run_sft(start: Path, rows: list[dict], settings: SFTSettings, out: Path, log: Callable[[str], None]) -> Path:
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from dataengine.train.expert_load import ExpertLoadCallback, routers

    started = time.time()
    tokenizer = AutoTokenizer.from_pretrained(str(start))
    model = load_model(start, settings)
    config = SFTConfig(
        **trainer_args(settings, out),
        max_length=settings.max_length,
        packing=settings.packing,
        # Single-turn rows in TRL's prompt-completion form: completion-only loss is the loss on the
        # assistant answer. (TRL's assistant_only_loss needs {% generation %} markers in the chat
        # template, which most templates, SmolLM2's included, do not have.)
        completion_only_loss=settings.assistant_only_loss,
        router_aux_loss_coef=settings.router_aux_loss_coef,
    )
    peft_config = None
    if settings.lora is not None:
        lora = settings.lora
        peft_config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            task_type="CAUSAL_LM",
        )
    dataset = Dataset.from_list([prompt_completion(r["messages"]) for r in rows])
    callbacks = []
    if routers(model):
        callbacks.append(ExpertLoadCallback(model, model.config.get_text_config().num_local_experts))
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    resumed = _train(trainer, out, log)
    extra = {"method": "sft", "rows": len(rows)}
    if callbacks:
        extra["expert_load"] = callbacks[0].load()
    return _finish(trainer, out, tokenizer, started, resumed, extra)


def run_distill(
    start: Path,
    rows: list[dict],
    settings: DistillSettings,
    out: Path,
    teacher: Callable[[], str],
    teacher_url: Callable[[], str],
    top_k: int | None,
    log: Callable[[str], None],
) -> Path:
    """`teacher()` gives the teacher's local path (gkd, on_policy); `teacher_url()` its server (server)."""
    from transformers import AutoTokenizer

    started = time.time()
    tokenizer = AutoTokenizer.from_pretrained(str(start))
    model = load_model(start, settings)
    common = trainer_args(settings, out)
    method = settings.method
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

    config = SFTConfig(**common, max_length=settings.max_length, packing=False, remove_unused_columns=False)
    dataset = Dataset.from_list(
        [
            {
                "input_ids": r["token_ids"],
                "completion_mask": [0] * r["completion_start"] + [1] * (len(r["token_ids"]) - r["completion_start"]),
                "completion_start": r["completion_start"],
                "teacher_topk_ids": r["teacher_topk_ids"],
                "teacher_topk_logprobs": r["teacher_topk_logprobs"],
            }
            for r in rows
        ]
    )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return OfflineTopKTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        data_collator=OfflineTopKCollator(pad_token_id=pad, top_k=top_k),
        temperature=settings.temperature,
        ce_weight=settings.ce_weight,
    )


def _teacher_kwargs(settings: DistillSettings) -> dict:
    return {"dtype": "bfloat16" if use_bf16(settings) else "float32"}


def _gkd(model, tokenizer, rows, settings: DistillSettings, common: dict, teacher_path: str):
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    config = GKDConfig(
        **common,
        max_length=settings.max_length,
        temperature=settings.temperature,
        lmbda=settings.lmbda,
        beta=settings.beta,
        seq_kd=settings.seq_kd,
        max_new_tokens=settings.max_new_tokens,
        teacher_model_init_kwargs=_teacher_kwargs(settings),
    )
    dataset = Dataset.from_list([{"messages": r["messages"]} for r in rows])
    return GKDTrainer(
        model=model, teacher_model=teacher_path, args=config, train_dataset=dataset, processing_class=tokenizer
    )


def _prompts(rows: list[dict]) -> Dataset:
    return Dataset.from_list([{"prompt": r["messages"][:-1]} for r in rows])


def _on_policy_args(settings: DistillSettings, common: dict) -> dict:
    return {
        **common,
        "temperature": settings.temperature,
        "beta": settings.beta,
        "max_completion_length": settings.max_new_tokens,
    }


def _on_policy(model, tokenizer, rows, settings: DistillSettings, common: dict, teacher_path: str):
    from trl import DistillationConfig, DistillationTrainer

    config = DistillationConfig(
        **_on_policy_args(settings, common), teacher_model_init_kwargs=_teacher_kwargs(settings)
    )
    return DistillationTrainer(
        model=model, teacher_model=teacher_path, args=config, train_dataset=_prompts(rows), processing_class=tokenizer
    )


def _server(model, tokenizer, rows, settings: DistillSettings, common: dict, url: str):
    from trl.experimental.server_distillation import ServerDistillationConfig, ServerDistillationTrainer

    config = ServerDistillationConfig(
        **_on_policy_args(settings, common), teacher_model_server_url=url, loss_top_k=settings.loss_top_k
    )
    return ServerDistillationTrainer(model=model, args=config, train_dataset=_prompts(rows), processing_class=tokenizer)
