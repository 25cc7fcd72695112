"""Per-expert token load of an MoE being fine-tuned, counted where the routing happens.

transformers' MoE routers (MixtralTopKRouter, Qwen3MoeTopKRouter, ...) return
(logits, scores, expert indices); a forward hook counts the indices during training steps.
Padding tokens are routed like any other and are counted too.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import TrainerCallback

from dataengine.experts.routers import is_router


def routers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if is_router(m)}


class ExpertLoadCallback(TrainerCallback):
    """Counts tokens per expert per MoE layer; logs the busiest expert's share over the even share
    (`expert_load_max_over_mean`, 1.0 is perfectly balanced) with every loss log, and keeps each layer's
    coefficient of variation of load over the steps since the last log (`steps`), so a fine-tune that
    collapses onto a few experts shows when and where."""

    def __init__(self, model: nn.Module, num_experts: int) -> None:
        self.num_experts = num_experts
        self.counts = {name: torch.zeros(num_experts, dtype=torch.long) for name in routers(model)}
        self.since_log = {name: torch.zeros(num_experts, dtype=torch.long) for name in self.counts}
        self.steps: list[dict] = []  # {"step": global step, "cv": [per layer]} at every log
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in routers(model).items()]

    def _hook(self, name: str):
        def count(module: nn.Module, args, output) -> None:
            if module.training:
                indices = output[2].detach().reshape(-1).cpu()
                seen = torch.bincount(indices, minlength=self.num_experts)
                self.counts[name] += seen
                self.since_log[name] += seen

        return count

    def on_log(self, args, state, control, logs=None, **kwargs):
        total = sum(self.since_log.values())
        if isinstance(total, torch.Tensor) and total.sum() > 0 and state.log_history:
            # Trainer appends a copy of `logs` to the history before callbacks run: record it there
            state.log_history[-1]["expert_load_max_over_mean"] = round((total.max() / total.float().mean()).item(), 4)
            per_layer = torch.stack([c.double() for c in self.since_log.values()])
            mean = per_layer.mean(dim=1)
            cv = torch.where(mean > 0, per_layer.std(dim=1, unbiased=False) / mean.clamp(min=1e-12), 0.0)
            self.steps.append({"step": state.global_step, "cv": [round(v, 4) for v in cv.tolist()]})
        for c in self.since_log.values():
            c.zero_()

    def on_train_end(self, args, state, control, **kwargs):
        for handle in self.handles:
            handle.remove()

    def load(self) -> dict[str, list[float]]:
        """Share of routed tokens per expert, per layer."""
        return {name: (c / max(1, int(c.sum()))).tolist() for name, c in self.counts.items()}
