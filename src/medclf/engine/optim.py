"""Optimiser and learning-rate schedule factories (built before the loop starts, DESIGN habit 6)."""

from __future__ import annotations

import math

import torch

from medclf.config import TrainConfig
from medclf.errors import ConfigError
from medclf.models.param_groups import param_groups


def create_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    groups = param_groups(model, lr=cfg.lr, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay)
    # fused kernels exist for CUDA only; on CPU the default (foreach) path is the fast one
    fused = {"fused": True} if device.type == "cuda" else {}
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True,
                               **fused)
    raise ConfigError(f"train.optimizer: unknown '{cfg.optimizer}' (valid: adamw, sgd)")


def create_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                     steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear warm-up, then cosine to zero, step decay, or constant."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.schedule not in ("cosine", "step", "constant"):
        raise ConfigError(f"train.schedule: unknown '{cfg.schedule}' (valid: cosine, step, constant)")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        if cfg.schedule == "step":
            return cfg.step_gamma ** ((step // steps_per_epoch) // max(1, cfg.step_size))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
