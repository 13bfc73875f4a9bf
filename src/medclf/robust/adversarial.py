"""Adversarial training objectives, selected by `train.adversarial` (fgsm | pgd | advprop).

Each objective has the signature of `medclf.engine.setup.Objective`: `(model, x_unit, y) -> loss`, where
`x_unit` is the augmented batch in [0, 1] before normalisation, so perturbations are in grey levels.

- `pgd`: Madry et al. 2018 — the loss on PGD examples only (random start, `train.adv_steps` steps).
- `fgsm`: Goodfellow et al. 2015 — half the clean loss plus half the loss on FGSM examples.
- `advprop`: Xie et al. 2020 — clean loss through the main batch norms plus the loss on PGD examples made
  and classified through the auxiliary batch norms (the model must be an `AdvPropModel`, see advprop.py).

Attack iterations run with the model in train mode (batch statistics, as the update will see them) but do
not update BatchNorm running averages; only the final forward passes do.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from medclf.errors import ConfigError
from medclf.robust.advprop import find_advprop
from medclf.robust.attacks import fgsm, frozen_bn_stats, pgd

ADVERSARIAL_METHODS = ("fgsm", "pgd", "advprop")


def create_adversarial_objective(train_cfg, loss_fn: nn.Module, transform) -> Callable:
    """The objective for `train_cfg.adversarial`; unknown names and bad eps/steps raise ConfigError."""
    method, eps, steps = train_cfg.adversarial, float(train_cfg.adv_eps), int(train_cfg.adv_steps)
    if method not in ADVERSARIAL_METHODS:
        raise ConfigError(f"train.adversarial: unknown '{method}' (valid: {', '.join(ADVERSARIAL_METHODS)})")
    if not 0.0 <= eps <= 1.0:
        raise ConfigError(f"train.adv_eps must be in [0, 1] (unit grey range; 1/255 = 0.00392), got {eps}")
    if steps < 1:
        raise ConfigError(f"train.adv_steps must be at least 1, got {steps}")
    # attack randomness (PGD's random start) from its own generator, seeded like the rest of training
    generator = torch.Generator().manual_seed(int(train_cfg.seed) + 7919)
    normalise = transform.normalise

    def perturb(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack=pgd) -> torch.Tensor:
        model = local_module(model)
        with frozen_bn_stats(model):
            kwargs = {"keep_best": False} if attack is pgd else {}
            return attack(model, x, y, eps, normalise, steps=steps, generator=generator, **kwargs).detach()

    def pgd_objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return loss_fn(model(normalise(perturb(model, x, y))), y)

    def fgsm_objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = perturb(model, x, y, attack=fgsm)
        return 0.5 * loss_fn(model(normalise(x)), y) + 0.5 * loss_fn(model(normalise(x_adv)), y)

    def advprop_objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        wrapper = find_advprop(model)
        with wrapper.auxiliary():
            x_adv = perturb(model, x, y)
            # one DDP forward per backward: the adversarial pass runs on the local module; its parameters
            # (shared with the DDP model) still get their gradients reduced in the one backward
            adv_loss = loss_fn(local_module(model)(normalise(x_adv)), y)
        return loss_fn(model(normalise(x)), y) + adv_loss

    return {"pgd": pgd_objective, "fgsm": fgsm_objective, "advprop": advprop_objective}[method]


def local_module(model: nn.Module) -> nn.Module:
    """The module inside torch.compile and DistributedDataParallel: attack iterations need input gradients only,
    and extra DDP forwards without their own backward would leave DDP's gradient reduction unfinished."""
    from torch.nn.parallel import DistributedDataParallel

    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, DistributedDataParallel) else model
