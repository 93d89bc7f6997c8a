"""Optimizers and per-step learning-rate schedules with warm-up."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from ..config.schema import OptimizerConfig, ScheduleConfig


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimizerConfig, device: torch.device):
    params = [p for p in params if p.requires_grad]
    fused = device.type == "cuda"
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay, fused=fused or None)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                             fused=fused or None)


def lr_factor(cfg: ScheduleConfig, step: int, steps_per_epoch: int, epochs: int, base_lr: float) -> float:
    """The learning-rate multiplier after ``step`` optimizer steps (epochs may be fractional)."""
    epoch = step / max(steps_per_epoch, 1)
    if cfg.warmup_epochs > 0 and epoch < cfg.warmup_epochs:
        return epoch / cfg.warmup_epochs
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "multistep":
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    span = max(epochs - cfg.warmup_epochs, 1e-8)
    progress = min(max((epoch - cfg.warmup_epochs) / span, 0.0), 1.0)
    floor = cfg.min_lr / base_lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer, cfg: ScheduleConfig, steps_per_epoch: int, epochs: int, base_lr: float):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(cfg, step, steps_per_epoch, epochs, base_lr)
    )
