"""offline_topk: distillation from stored teacher top-k logprobs, with no teacher in memory.

For every answer token the teacher's distribution is known on its top-k tokens; the rest of the
vocabulary is one "tail" bucket holding the remaining mass. The student's distribution is folded
onto the same k + 1 buckets, and the loss is the forward KL(teacher || student) between the two.
A temperature T softens both bucket distributions alike (log-probabilities divided by T, then
renormalised) and the loss is scaled by T^2, as in Hinton et al.; T = 1 is the plain truncated KL.

The trainer is TRL's SFTTrainer with its loss replaced: datasets, collation, checkpoints, logging
and resume all stay TRL's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from trl import SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

TEACHER_KEYS = ("teacher_topk_ids", "teacher_topk_logprobs")


def with_tail(topk_logprobs: torch.Tensor) -> torch.Tensor:
    """Append the tail bucket, log(1 - sum of the top-k probabilities), as a (k+1)-th entry."""
    mass = torch.logsumexp(topk_logprobs, dim=-1, keepdim=True).clamp(max=-1e-7)  # keep 1 - mass > 0
    return torch.cat([topk_logprobs, torch.log(-torch.expm1(mass))], dim=-1)


def topk_kl(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed KL(teacher || student) over the k + 1 buckets at the masked-in positions, and their count.

    student_logits (..., V); topk_ids, topk_logprobs (..., k), padded with logprob -inf; mask (...).
    """
    # bf16 logits lose the small probabilities the KL is made of: compute in fp32 at least
    logits = student_logits if student_logits.dtype == torch.float64 else student_logits.float()
    student = torch.log_softmax(logits, dim=-1)
    teacher = topk_logprobs.to(student.dtype)
    present = torch.isfinite(teacher)
    student_topk = torch.gather(student, -1, topk_ids.long()).masked_fill(~present, float("-inf"))
    t = with_tail(teacher)
    s = with_tail(student_topk)
    if temperature != 1.0:
        t = torch.log_softmax(t / temperature, dim=-1)
        s = torch.log_softmax(s / temperature, dim=-1)
    # 0 * log 0 terms (padding, an empty tail) are 0, not NaN
    kl = torch.where(t > float("-inf"), t.exp() * (t - s), torch.zeros_like(t)).sum(-1)
    mask = mask.bool()
    return (kl * mask).sum() * temperature**2, mask.sum()


@dataclass
class OfflineTopKCollator(DataCollatorForLanguageModeling):
    """TRL's collator, plus the teacher's top-k laid out per token position: entry p describes the
    distribution of token p (so the logits at p - 1 are compared with it)."""

    top_k: int = 20

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        teacher = [{key: ex.pop(key) for key in (*TEACHER_KEYS, "completion_start")} for ex in examples]
        learned = [list(ex.get("completion_mask") or []) for ex in examples]
        batch = super().torch_call(examples)
        size = batch["input_ids"].shape
        ids = torch.zeros((*size, self.top_k), dtype=torch.long)
        logprobs = torch.full((*size, self.top_k), float("-inf"))
        # the positions the KL is taken at: the answer, or every assistant turn of a conversation (the teacher
        # was also asked for the user turns between them, which the student does not learn)
        mask = torch.zeros(size, dtype=torch.bool)
        for b, m in enumerate(learned):
            mask[b, : min(len(m), size[1])] = torch.tensor(m[: size[1]], dtype=torch.bool)
        for b, (ex, t) in enumerate(zip(examples, teacher, strict=True)):
            start = t["completion_start"]
            # the sequence may have been truncated to max_length: only positions that remain
            n = min(len(t["teacher_topk_ids"]), len(ex["input_ids"]) - start)
            if n > 0:
                ids[b, start : start + n] = torch.tensor(t["teacher_topk_ids"][:n])[:, : self.top_k]
                logprobs[b, start : start + n] = torch.tensor(t["teacher_topk_logprobs"][:n])[:, : self.top_k]
        batch["teacher_topk_ids"] = ids
        batch["teacher_topk_logprobs"] = logprobs
        batch["teacher_mask"] = mask
        return batch


class OfflineTopKTrainer(SFTTrainer):
    """SFTTrainer whose loss is the top-k + tail KL to the stored teacher distribution
    (plus `ce_weight` times the usual next-token cross-entropy on the answer)."""

    def __init__(self, *args, temperature: float = 1.0, ce_weight: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.temperature = temperature
        self.ce_weight = ce_weight

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ids = inputs.pop("teacher_topk_ids")
        logprobs = inputs.pop("teacher_topk_logprobs")
        learned = inputs.pop("teacher_mask")
        labels = inputs.pop("labels")
        outputs = model(**inputs, use_cache=False)
        logits = outputs.logits[:, :-1]
        # positions with a teacher distribution, in a turn the student learns
        present = torch.isfinite(logprobs[:, 1:, 0]) & learned[:, 1:]
        kl_sum, count = topk_kl(logits, ids[:, 1:], logprobs[:, 1:], present, self.temperature)
        kl = kl_sum / count.clamp(min=1)
        loss = kl
        mode = "train" if model.training else "eval"
        if self.ce_weight:
            targets = labels[:, 1:].reshape(-1)
            # summed then divided, so a batch whose answers were all truncated away gives 0, not NaN
            ce_sum = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets, reduction="sum")
            ce = ce_sum / (targets != -100).sum().clamp(min=1)
            loss = loss + self.ce_weight * ce
            self._metrics[mode]["cross_entropy"].append(ce.item())
        self._metrics[mode]["topk_kl"].append(kl.item())
        return (loss, outputs) if return_outputs else loss
