"""Classification losses for imbalanced data, behind one name -> constructor registry.

Every loss takes `(logits: B x K float, target: B long)` and returns a scalar. Models always output K >= 2
logits (softmax), so the binary case is K = 2 with the positive class at `positive_index`.

    loss_fn = create_loss("focal", num_classes=2, class_counts=[900, 100], gamma=2.0, class_balanced=True)

Names: `ce` (cross-entropy), `focal` (Lin et al. 2017), `soft_f1` (1 - soft F1). `ce` and `focal` accept
class-balanced weights from the effective number of samples (Cui et al. 2019), see `class_balanced_weights`.
The formulas and when to use each are in docs/imbalance.md.
"""

from __future__ import annotations

import inspect
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medclf.errors import ConfigError
from medclf.registry import Registry

LossFactory = Callable[..., nn.Module]
LOSSES: Registry[LossFactory] = Registry("loss", field="loss.name", error=ConfigError)
MULTILABEL_LOSSES: Registry[LossFactory] = Registry("multilabel loss", field="loss.name",
                                                    error=ConfigError)  # see "multilabel" below


def register_loss(name: str, registry: Registry[LossFactory] = LOSSES) -> Callable[[LossFactory], LossFactory]:
    """Decorator: add a factory `f(num_classes, class_counts, **params) -> nn.Module` to `LOSSES` under `name`
    (or `f(num_labels, pos_weights, **params)` to `MULTILABEL_LOSSES`)."""
    return registry.register(name)


def list_losses() -> list[str]:
    return LOSSES.names()


def create_loss(
    name: str, num_classes: int, class_counts: Sequence[int] | None = None, **params: object
) -> nn.Module:
    """Build the loss `name` for a `num_classes`-way classifier.

    `class_counts` (per class, from the training split) is needed only with `class_balanced=True`.
    Unknown names and unknown parameters raise `ConfigError` listing what is valid.
    """
    factory = LOSSES.lookup(name)
    if num_classes < 2:
        raise ConfigError(f"loss: num_classes must be >= 2 (models output K >= 2 logits), got {num_classes}")
    valid = [p for p in inspect.signature(factory).parameters if p not in ("num_classes", "class_counts")]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ConfigError(f"loss.params: unknown {unknown} for loss {name!r}; valid: {', '.join(valid)}")
    return factory(num_classes, class_counts, **params)


def class_balanced_weights(class_counts: Sequence[int], beta: float = 0.999) -> torch.Tensor:
    """Per-class weights from the effective number of samples (Cui et al., CVPR 2019).

    w_c = (1 - beta) / (1 - beta**n_c), normalised so the K weights sum to K. beta = 0 gives uniform
    weights; beta -> 1 tends to inverse class frequency (w_c proportional to 1 / n_c).
    """
    counts = np.asarray(class_counts, dtype=np.float64)
    if counts.ndim != 1 or len(counts) < 2:
        raise ConfigError(f"loss: class_counts must list one count per class (K >= 2), got {class_counts}")
    if (counts <= 0).any():
        raise ConfigError(f"loss: class_balanced needs every class in the training split, got counts {counts.tolist()}")
    if not 0.0 <= beta < 1.0:
        raise ConfigError(f"loss.params.beta: must be in [0, 1), got {beta}")
    # float64 and expm1/log1p: for beta close to 1, 1 - beta**n loses most digits in the naive form.
    one_minus_beta_n = -np.expm1(counts * np.log1p(beta - 1.0)) if beta > 0 else np.ones_like(counts)
    weights = (1.0 - beta) / one_minus_beta_n  # = 1 / effective number (1 - beta**n) / (1 - beta)
    weights = weights * len(counts) / weights.sum()
    return torch.tensor(weights, dtype=torch.float32)


def _class_weights(
    num_classes: int, class_counts: Sequence[int] | None, class_balanced: bool, beta: float
) -> torch.Tensor | None:
    if not class_balanced:
        return None
    if class_counts is None:
        raise ConfigError("loss.params.class_balanced: needs class_counts from the training split")
    if len(class_counts) != num_classes:
        raise ConfigError(f"loss: class_counts has {len(class_counts)} entries for {num_classes} classes")
    return class_balanced_weights(class_counts, beta)


def _alpha_vector(alpha: float | Sequence[float] | None, num_classes: int, positive_index: int) -> torch.Tensor | None:
    """Per-class alpha: a float is the positive class's alpha in a binary task (others get 1 - alpha)."""
    if alpha is None:
        return None
    if isinstance(alpha, (int, float)):
        if num_classes != 2:
            raise ConfigError(f"loss.params.alpha: a single float needs 2 classes, got {num_classes}; give a list")
        vec = torch.full((2,), 1.0 - float(alpha))
        vec[positive_index] = float(alpha)
        return vec
    vec = torch.tensor([float(a) for a in alpha])
    if len(vec) != num_classes:
        raise ConfigError(f"loss.params.alpha: {len(vec)} values for {num_classes} classes")
    return vec


class FocalLoss(nn.Module):
    """Softmax focal loss, FL = -w_t (1 - p_t)**gamma log p_t, averaged over the batch.

    Written by hand because torchvision's `sigmoid_focal_loss` is the sigmoid (one-vs-rest) form and our
    models output softmax logits. `class_weights` (per class, e.g. alpha and/or class-balanced weights)
    gives w_t = class_weights[target]; the mean is a plain mean over samples, as in Lin et al. and Cui et al.
    """

    def __init__(self, gamma: float = 2.0, class_weights: torch.Tensor | None = None) -> None:
        super().__init__()
        if gamma < 0:
            raise ConfigError(f"loss.params.gamma: must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        self.register_buffer("class_weights", class_weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # float32 even under autocast: log p_t and 1 - p_t of confident predictions underflow in half precision.
        logp_t = F.log_softmax(logits.float(), dim=1).gather(1, target.view(-1, 1)).squeeze(1)
        loss = -logp_t
        if self.gamma > 0:
            # -expm1(log p) = 1 - p without cancellation; the clamp keeps d/dx x**gamma finite for gamma < 1
            # when p_t rounds to 1 (e.g. logits of +-50), where the true gradient is ~0 anyway.
            one_minus_p = (-torch.expm1(logp_t)).clamp(min=1e-12)
            loss = one_minus_p.pow(self.gamma) * loss
        if self.class_weights is not None:
            loss = self.class_weights[target] * loss
        return loss.mean()


class SoftF1Loss(nn.Module):
    """1 - soft F1 on softmax probabilities (the seed deck's "F1 loss"), computed over the whole batch.

    tp = sum p*y, fp = sum p*(1-y), fn = sum (1-p)*y, F1 = 2tp / (2tp + fp + fn + eps). Binary (K = 2): on the
    probability of `positive_index`. K > 2: the macro mean of the per-class soft F1 (one-vs-rest). It is a
    batch statistic, not a mean of per-sample terms, so it wants reasonably large batches.
    """

    def __init__(self, positive_index: int = 1, eps: float = 1e-7) -> None:
        super().__init__()
        self.positive_index = positive_index
        self.eps = eps

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        prob = F.softmax(logits.float(), dim=1)
        onehot = F.one_hot(target, num_classes=logits.shape[1]).to(prob.dtype)
        if logits.shape[1] == 2:
            prob, onehot = prob[:, [self.positive_index]], onehot[:, [self.positive_index]]
        tp = (prob * onehot).sum(0)
        fp = (prob * (1 - onehot)).sum(0)
        fn = ((1 - prob) * onehot).sum(0)
        f1 = 2 * tp / (2 * tp + fp + fn + self.eps)
        return 1 - f1.mean()


def _check_positive_index(num_classes: int, positive_index: int) -> None:
    if not 0 <= positive_index < num_classes:
        raise ConfigError(f"loss.params.positive_index: {positive_index} is not a class index in [0, {num_classes})")


@register_loss("ce")
def _make_ce(
    num_classes: int,
    class_counts: Sequence[int] | None = None,
    label_smoothing: float = 0.0,
    class_balanced: bool = False,
    beta: float = 0.999,
) -> nn.Module:
    """Cross-entropy; with class weights PyTorch takes the weighted mean sum(w_i l_i) / sum(w_i)."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ConfigError(f"loss.params.label_smoothing: must be in [0, 1), got {label_smoothing}")
    weight = _class_weights(num_classes, class_counts, class_balanced, beta)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)


@register_loss("focal")
def _make_focal(
    num_classes: int,
    class_counts: Sequence[int] | None = None,
    gamma: float = 2.0,
    alpha: float | Sequence[float] | None = None,
    positive_index: int = 1,
    class_balanced: bool = False,
    beta: float = 0.999,
) -> nn.Module:
    """Focal loss; alpha and class-balanced weights, when both given, multiply per class."""
    _check_positive_index(num_classes, positive_index)
    weights = _alpha_vector(alpha, num_classes, positive_index)
    balanced = _class_weights(num_classes, class_counts, class_balanced, beta)
    if balanced is not None:
        weights = balanced if weights is None else weights * balanced
    return FocalLoss(gamma=gamma, class_weights=weights)


@register_loss("soft_f1")
def _make_soft_f1(
    num_classes: int, class_counts: Sequence[int] | None = None, positive_index: int = 1, eps: float = 1e-7
) -> nn.Module:
    _check_positive_index(num_classes, positive_index)
    return SoftF1Loss(positive_index=positive_index, eps=eps)


# ---------------------------------------------------------------------------------------------- multilabel
# A multilabel target is one int64 bit mask per image (medclf.tasks); these losses unpack it into the K x 0/1
# matrix and score each logit with its own sigmoid. Their registry is separate: the same names (`ce`, `focal`)
# mean the one-vs-rest form there, so a config moves between task types unchanged.


def multi_hot_target(mask: torch.Tensor, k: int) -> torch.Tensor:
    """`B` int64 bit masks -> `B x K` float 0/1."""
    bits = torch.arange(k, device=mask.device, dtype=torch.int64)
    return ((mask.view(-1, 1) >> bits) & 1).float()


def create_multilabel_loss(name: str, num_labels: int, label_counts: Sequence[int] | None = None,
                           n_images: int | None = None, **params: object) -> nn.Module:
    """The loss `name` for `num_labels` independent sigmoids; `label_counts` (images holding each label) and
    `n_images` from the training split are needed only with `pos_weight=True`."""
    if name in LOSSES and name not in MULTILABEL_LOSSES:  # a single-label loss: say why it is refused here
        raise ConfigError(f"loss.name: {name!r} is not defined for a multilabel task; valid: "
                          f"{', '.join(MULTILABEL_LOSSES.names())}")
    factory = MULTILABEL_LOSSES.lookup(name)
    valid = [p for p in inspect.signature(factory).parameters if p not in ("num_labels", "pos_weights")]
    unknown = sorted(set(params) - set(valid) - {"pos_weight"})
    if unknown:
        raise ConfigError(f"loss.params: unknown {unknown} for multilabel loss {name!r}; valid: {', '.join(valid)}")
    weights = _pos_weights(label_counts, n_images, num_labels) if params.pop("pos_weight", False) else None
    return factory(num_labels, pos_weights=weights, **params)


def _pos_weights(label_counts: Sequence[int] | None, n_images: int | None, k: int) -> torch.Tensor:
    """negatives / positives per label (BCEWithLogitsLoss's pos_weight), so each label's two sides weigh alike."""
    if label_counts is None or n_images is None or len(label_counts) != k:
        raise ConfigError("loss.pos_weight: needs the training split's count of each label")
    counts = np.asarray(label_counts, dtype=np.float64)
    if (counts <= 0).any() or (counts >= n_images).any():
        raise ConfigError(f"loss.pos_weight: every label needs positives and negatives in the training split, "
                          f"got {counts.astype(int).tolist()} of {n_images} images")
    return torch.tensor((n_images - counts) / counts, dtype=torch.float32)


class MultiLabelBCE(nn.Module):
    """Mean binary cross-entropy over images and labels (torch's BCEWithLogitsLoss on the unpacked mask)."""

    def __init__(self, num_labels: int, pos_weights: torch.Tensor | None = None) -> None:
        super().__init__()
        self.num_labels = num_labels
        self.loss = nn.BCEWithLogitsLoss(pos_weight=pos_weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(logits.float(), multi_hot_target(target, self.num_labels))


class MultiLabelFocal(nn.Module):
    """torchvision's sigmoid focal loss (Lin et al. 2017), averaged over images and labels; `pos_weights`
    multiply each label's positive terms as in BCEWithLogitsLoss."""

    def __init__(self, num_labels: int, gamma: float = 2.0, alpha: float | None = None,
                 pos_weights: torch.Tensor | None = None) -> None:
        super().__init__()
        if gamma < 0:
            raise ConfigError(f"loss.params.gamma: must be >= 0, got {gamma}")
        self.num_labels, self.gamma, self.alpha = num_labels, float(gamma), -1.0 if alpha is None else float(alpha)
        self.register_buffer("pos_weights", pos_weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from torchvision.ops import sigmoid_focal_loss

        y = multi_hot_target(target, self.num_labels)
        loss = sigmoid_focal_loss(logits.float(), y, alpha=self.alpha, gamma=self.gamma, reduction="none")
        if self.pos_weights is not None:
            loss = loss * (1 + (self.pos_weights - 1) * y)
        return loss.mean()


class AsymmetricLoss(nn.Module):
    """ASL (Ridnik et al., ICCV 2021): positives -(1-p)^g+ log p, negatives -p_m^g- log(1 - p_m) with the
    shifted probability p_m = max(p - clip, 0), summed over labels and averaged over images as in the paper.

    Written by hand: no maintained library on PyPI ships it (the authors' repository is not a package).
    """

    def __init__(self, num_labels: int, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05,
                 pos_weights: torch.Tensor | None = None, eps: float = 1e-8) -> None:
        super().__init__()
        if gamma_neg < 0 or gamma_pos < 0 or not 0 <= clip < 1:
            raise ConfigError(f"loss.params: asl needs gamma_neg, gamma_pos >= 0 and clip in [0, 1), got "
                              f"{gamma_neg}, {gamma_pos}, {clip}")
        self.num_labels, self.gamma_neg, self.gamma_pos, self.clip, self.eps = \
            num_labels, float(gamma_neg), float(gamma_pos), float(clip), eps
        self.register_buffer("pos_weights", pos_weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        y = multi_hot_target(target, self.num_labels)
        p = torch.sigmoid(logits.float())
        p_neg = (p - self.clip).clamp(min=0) if self.clip > 0 else p
        pos = y * torch.log(p.clamp(min=self.eps)) * (1 - p).pow(self.gamma_pos)
        if self.pos_weights is not None:
            pos = pos * self.pos_weights
        neg = (1 - y) * torch.log((1 - p_neg).clamp(min=self.eps)) * p_neg.pow(self.gamma_neg)
        return -(pos + neg).sum(dim=1).mean()


@register_loss("ce", MULTILABEL_LOSSES)
def _make_multilabel_bce(num_labels: int, pos_weights: torch.Tensor | None = None) -> nn.Module:
    return MultiLabelBCE(num_labels, pos_weights)


register_loss("bce", MULTILABEL_LOSSES)(_make_multilabel_bce)


@register_loss("focal", MULTILABEL_LOSSES)
def _make_multilabel_focal(num_labels: int, pos_weights: torch.Tensor | None = None, gamma: float = 2.0,
                           alpha: float | None = None) -> nn.Module:
    return MultiLabelFocal(num_labels, gamma=gamma, alpha=alpha, pos_weights=pos_weights)


@register_loss("asl", MULTILABEL_LOSSES)
def _make_asl(num_labels: int, pos_weights: torch.Tensor | None = None, gamma_neg: float = 4.0,
              gamma_pos: float = 0.0, clip: float = 0.05) -> nn.Module:
    return AsymmetricLoss(num_labels, gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, pos_weights=pos_weights)
