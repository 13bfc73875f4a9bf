"""L-infinity attacks (FGSM, PGD) in the model's unit-range grey input space, before normalisation.

Perturbing `transform.unit(images)` (B x 1 x H x W in [0, 1]) rather than the normalised tensor means eps is
measured in grey levels of the image the model sees: eps = 1/255 changes every pixel by at most one of the
256 grey levels. The model is any module mapping the normalised batch to logits or log-probabilities (an
Ensemble returns log of combined probabilities); cross-entropy on either is the negative log-likelihood of
the true class, so the same attack works on both.

Written by hand rather than with torchattacks/ART: both attack the normalised tensor (or need a wrapped
model that normalises), clamp to [0, 1] in that space, and neither is a dependency here; FGSM/PGD are a few
lines each (Goodfellow et al. 2015; Madry et al. 2018).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from medclf.errors import MedclfError
from medclf.registry import Registry

Normalise = Callable[[torch.Tensor], torch.Tensor]


def parse_eps(text: str) -> list[float]:
    """'0.5/255,1/255,2/255' -> unit-range floats; fractions or decimals, each within [0, 1]."""
    values = []
    for item in (t.strip() for t in str(text).split(",")):
        if not item:
            continue
        num, _, den = item.partition("/")
        try:
            value = float(num) / float(den) if den else float(num)
        except (ValueError, ZeroDivisionError):
            raise MedclfError(f"--eps: '{item}' is not a number or fraction (e.g. 0.5/255,1/255,2/255)") from None
        if not 0.0 <= value <= 1.0:
            raise MedclfError(f"--eps: {item} is outside [0, 1]; eps is in unit grey range, write grey levels as N/255")
        values.append(value)
    if not values:
        raise MedclfError("--eps: no values given (e.g. 0.5/255,1/255,2/255)")
    return values


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """BatchNorm layers keep using batch statistics in train mode but do not update their running averages.

    Attack iterations during training are extra forward passes on the same batch; without this they would
    push the running statistics towards the half-made perturbations several times per step.
    """
    saved = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            saved.append((m, m.momentum, m.num_batches_tracked.clone()))
            m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)


def _loss_per_sample(model: nn.Module, normalise: Normalise, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for class indices `y` (B); for a multilabel truth (`y` B x K 0/1 floats) binary cross-entropy
    summed over the labels, so the attack pushes every finding's call."""
    logits = model(normalise(x)).float()
    if y.dim() == 2:
        return F.binary_cross_entropy_with_logits(logits, y.float(), reduction="none").sum(dim=1)
    return F.cross_entropy(logits, y, reduction="none")


def _input_grad(model: nn.Module, normalise: Normalise, x: torch.Tensor,
                y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-sample loss, d loss / d x) without touching parameter gradients."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = _loss_per_sample(model, normalise, x, y)
        (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad


ATTACKS: Registry[Callable[..., torch.Tensor]] = Registry("attack")


@ATTACKS.register("fgsm")
def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, normalise: Normalise,
         steps: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    """One signed-gradient step of size eps (Goodfellow et al. 2015); `steps`/`generator` are ignored."""
    if eps == 0:
        return x.detach().clone()
    _, grad = _input_grad(model, normalise, x, y)
    return (x.detach() + eps * grad.sign()).clamp(0.0, 1.0)


@ATTACKS.register("pgd")
def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, normalise: Normalise,
        steps: int = 10, generator: torch.Generator | None = None, alpha: float | None = None,
        random_start: bool = True, keep_best: bool = True) -> torch.Tensor:
    """Projected gradient ascent on the loss inside the L-inf ball of radius eps around x (Madry et al. 2018).

    Step size `alpha` defaults to 2.5 * eps / steps (Madry's choice: the ball's edge is reachable from any
    start). With `keep_best`, each image keeps the iterate of highest loss seen, the clean image included,
    so the returned loss is never below the clean one (evaluation); training uses the last iterate.
    """
    x = x.detach()
    if eps == 0 or steps < 1:
        return x.clone()
    alpha = 2.5 * eps / steps if alpha is None else alpha
    adv = x.clone()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device) * 2 - 1
        adv = (x + eps * noise).clamp(0.0, 1.0)
    best, best_loss = x.clone(), None
    for _ in range(steps):
        loss, grad = _input_grad(model, normalise, adv, y)
        if keep_best:
            best, best_loss = _keep_higher(best, best_loss, adv, loss, model, normalise, x, y)
        adv = adv + alpha * grad.sign()
        adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0.0, 1.0)
    if not keep_best:
        return adv
    with torch.no_grad():
        final_loss = _loss_per_sample(model, normalise, adv, y)
    best, _ = _keep_higher(best, best_loss, adv, final_loss, model, normalise, x, y)
    return best


def _keep_higher(best: torch.Tensor, best_loss: torch.Tensor | None, cand: torch.Tensor, cand_loss: torch.Tensor,
                 model: nn.Module, normalise: Normalise, x: torch.Tensor, y: torch.Tensor):
    if best_loss is None:  # first call: the clean image is the first candidate
        with torch.no_grad():
            best_loss = _loss_per_sample(model, normalise, x, y)
    better = cand_loss > best_loss
    mask = better.view(-1, *([1] * (x.dim() - 1)))
    return torch.where(mask, cand, best), torch.where(better, cand_loss, best_loss)


def get_attack(name: str) -> Callable[..., torch.Tensor]:
    return ATTACKS.lookup(name)
