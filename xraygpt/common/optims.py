"""Learning-rate schedules and the optimizer's parameter groups.

The schedules keep the original configs' keys and shapes (linear warm-up from
``warmup_lr`` to ``init_lr``, then cosine to ``min_lr`` or per-epoch step decay),
but are plain :class:`torch.optim.lr_scheduler.LRScheduler` subclasses stepped
once per optimizer step, so their state saves and restores with the library's
``state_dict`` and resume is exact.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List

import torch
from torch.optim.lr_scheduler import LRScheduler

from xraygpt.common.registry import registry
from xraygpt.common.schema import RunConfig


def _warmup(step: int, warmup_steps: int, warmup_lr: float, init_lr: float) -> float:
    return warmup_lr + (init_lr - warmup_lr) * step / max(warmup_steps, 1)


class _StepwiseSchedule(LRScheduler):
    """Sets every group's lr to ``lr_at(step)``; ``last_epoch`` counts optimizer steps."""

    def get_lr(self) -> List[float]:
        lr = self.lr_at(max(self.last_epoch, 0))
        return [lr for _ in self.optimizer.param_groups]

    def lr_at(self, step: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError


@registry.register_lr_scheduler("linear_warmup_cosine_lr")
class LinearWarmupCosineLR(_StepwiseSchedule):
    """Linear warm-up over ``warmup_steps``, then a half cosine from ``init_lr`` to ``min_lr``
    over the remaining optimizer steps of ``max_epoch * iters_per_epoch``."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        total_steps: int,
        init_lr: float,
        min_lr: float,
        warmup_lr: float = 0.0,
        warmup_steps: int = 0,
    ):
        self.total_steps = int(total_steps)
        self.init_lr, self.min_lr, self.warmup_lr = float(init_lr), float(min_lr), float(warmup_lr)
        self.warmup_steps = int(warmup_steps)
        super().__init__(optimizer)

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return _warmup(step, self.warmup_steps, self.warmup_lr, self.init_lr)
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        return self.min_lr + (self.init_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    @classmethod
    def from_run_config(cls, optimizer: torch.optim.Optimizer, run: RunConfig, iters_per_epoch: int):
        return cls(
            optimizer,
            total_steps=run.max_epoch * iters_per_epoch,
            init_lr=run.init_lr,
            min_lr=run.min_lr,
            warmup_lr=run.warmup_lr,
            warmup_steps=run.warmup_steps,
        )


@registry.register_lr_scheduler("linear_warmup_step_lr")
class LinearWarmupStepLR(_StepwiseSchedule):
    """Linear warm-up, then ``init_lr * lr_decay_rate ** epoch`` floored at ``min_lr``."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        iters_per_epoch: int,
        init_lr: float,
        min_lr: float,
        decay_rate: float,
        warmup_lr: float = 0.0,
        warmup_steps: int = 0,
    ):
        self.iters_per_epoch = max(int(iters_per_epoch), 1)
        self.init_lr, self.min_lr, self.warmup_lr = float(init_lr), float(min_lr), float(warmup_lr)
        self.decay_rate = float(decay_rate)
        self.warmup_steps = int(warmup_steps)
        super().__init__(optimizer)

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return _warmup(step, self.warmup_steps, self.warmup_lr, self.init_lr)
        epoch = step // self.iters_per_epoch
        return max(self.min_lr, self.init_lr * self.decay_rate**epoch)

    @classmethod
    def from_run_config(cls, optimizer: torch.optim.Optimizer, run: RunConfig, iters_per_epoch: int):
        if run.lr_decay_rate is None:
            raise ValueError("run.lr_sched linear_warmup_step_lr needs run.lr_decay_rate (e.g. 0.9)")
        return cls(
            optimizer,
            iters_per_epoch=iters_per_epoch,
            init_lr=run.init_lr,
            min_lr=run.min_lr,
            decay_rate=run.lr_decay_rate,
            warmup_lr=run.warmup_lr,
            warmup_steps=run.warmup_steps,
        )


def _no_decay(name: str, param: torch.nn.Parameter) -> bool:
    """Biases, norm weights and other 1-D tensors (gains, query tokens' scales) skip weight decay."""
    lowered = name.lower()
    return param.ndim < 2 or lowered.endswith(".bias") or "norm" in lowered or "ln_" in lowered


def param_groups(named_params: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float) -> List[Dict[str, Any]]:
    """Two AdamW groups of the *trainable* parameters: decayed matrices, undecayed biases/norms."""
    decay, no_decay = [], []
    for name, param in named_params:
        if not param.requires_grad:
            continue
        (no_decay if _no_decay(name, param) else decay).append(param)
    if not decay and not no_decay:
        raise ValueError(
            "the model has no trainable parameters: unfreeze something (e.g. model.freeze_llm: false) "
            "or check that llama_proj is built"
        )
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": float(weight_decay)})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: torch.nn.Module, run: RunConfig, fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW over the trainable parameters (betas as the original: 0.9, 0.999).

    ``fused``: one CUDA kernel per step and no full-size temporaries (the default foreach path allocates
    copies of the moments, which a fully trained 7B LLM cannot afford on one GPU).
    """
    groups = param_groups(model.named_parameters(), run.weight_decay)
    return torch.optim.AdamW(groups, lr=run.init_lr, betas=(0.9, 0.999), fused=fused)


def build_scheduler(optimizer: torch.optim.Optimizer, run: RunConfig, iters_per_epoch: int) -> LRScheduler:
    scheduler_cls = registry.get_lr_scheduler_class(run.lr_sched)
    return scheduler_cls.from_run_config(optimizer, run, iters_per_epoch)
