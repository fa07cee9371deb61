"""Optimizers and learning-rate schedules, chosen by name from a recipe."""

from __future__ import annotations

import math

import torch
from torch import nn

from neuratlas.training.config import OptimizerConfig, ScheduleConfig


def param_groups(model: nn.Module, weight_decay: float, decay_all: bool) -> list[dict]:
    """Weight decay on weight matrices/kernels only; norms, biases and embeddings-as-1-D params are exempt."""
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_all or weight_decay == 0:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.decay_norm_and_bias)
    fused = {"fused": True} if cfg.fused else {}
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **fused)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **fused)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **fused)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum, eps=cfg.eps)
    raise ValueError(cfg.name)


def lr_factor(step: int, total: int, cfg: ScheduleConfig) -> float:
    """Multiplier of the peak lr at ``step`` (0-based) of ``total`` steps."""
    if cfg.name == "onecycle":
        up = max(1, int(cfg.pct_start * total))
        lo, end = 1.0 / cfg.div_factor, 1.0 / (cfg.div_factor * cfg.final_div_factor)
        if step < up:
            return lo + (1 - lo) * (1 - math.cos(math.pi * step / up)) / 2
        t = min(1.0, (step - up) / max(1, total - up))
        return end + (1 - end) * (1 + math.cos(math.pi * t)) / 2
    warmup = cfg.warmup_steps or int(cfg.warmup_frac * total)
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    if cfg.name == "cosine":
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * (1 + math.cos(math.pi * t)) / 2
    if cfg.name == "linear":
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * (1 - t)
    if cfg.name == "step":
        return cfg.gamma ** ((step - warmup) // cfg.step_size)
    return 1.0


def build_scheduler(opt: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total_steps, cfg))
