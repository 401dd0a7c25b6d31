"""Optimiser and learning-rate schedule, computed from the global step alone.

The learning rate is a pure function of the step, so resuming needs no scheduler state.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from pixdex.errors import ConfigError


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Linear warm-up, then cosine decay to zero (or constant) over ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(pipeline: nn.Module, train: dict[str, Any]) -> torch.optim.Optimizer:
    """AdamW (default) or SGD; no weight decay on biases and norm weights; the head gets
    ``lr * head_lr_mult``. Each group remembers its base lr in ``base_lr``."""
    groups = []
    for part, mult in (("backbone", 1.0), ("head", train["head_lr_mult"])):
        module = getattr(pipeline, part)
        decay = [p for p in module.parameters() if p.ndim > 1]
        no_decay = [p for p in module.parameters() if p.ndim <= 1]
        for params, wd in ((decay, train["weight_decay"]), (no_decay, 0.0)):
            if params:
                lr = train["lr"] * mult
                groups.append({"params": params, "weight_decay": wd, "lr": lr, "base_lr": lr, "part": part})
    name = train["optimizer"]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=train["lr"])
    if name == "sgd":
        return torch.optim.SGD(groups, lr=train["lr"], momentum=train["momentum"], nesterov=False)
    raise ConfigError(f"Unknown optimizer '{name}': use adamw or sgd")


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return optimizer.param_groups[0]["lr"]
