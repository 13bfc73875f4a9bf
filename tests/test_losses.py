"""Losses against numbers worked out by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from medclf.errors import ConfigError
from medclf.losses import LOSSES, class_balanced_weights, create_loss, list_losses


def binary_logits(p_pos: list[float]) -> torch.Tensor:
    """K = 2 logits [0, log(p/(1-p))], whose softmax gives exactly p for class 1."""
    return torch.tensor([[0.0, math.log(p / (1 - p))] for p in p_pos], dtype=torch.float64)


def test_registry_lists_the_three_losses() -> None:
    assert list_losses() == ["ce", "focal", "soft_f1"]
    assert set(LOSSES) == {"ce", "focal", "soft_f1"}


def test_ce_matches_hand_computation() -> None:
    logits = torch.tensor([[2.0, 0.5], [0.1, 1.2]])
    target = torch.tensor([0, 1])
    # per sample: log(sum exp) - logit of the true class
    l0 = math.log(math.exp(2.0) + math.exp(0.5)) - 2.0
    l1 = math.log(math.exp(0.1) + math.exp(1.2)) - 1.2
    assert l0 == pytest.approx(0.201413, abs=1e-6)
    loss = create_loss("ce", num_classes=2)(logits, target)
    assert loss.item() == pytest.approx((l0 + l1) / 2, abs=1e-6)


def test_ce_label_smoothing_matches_hand_computation() -> None:
    logits = torch.tensor([[2.0, 0.5], [0.1, 1.2]])
    target = torch.tensor([0, 1])
    eps = 0.1
    lse = [math.log(math.exp(2.0) + math.exp(0.5)), math.log(math.exp(0.1) + math.exp(1.2))]
    logp = [[2.0 - lse[0], 0.5 - lse[0]], [0.1 - lse[1], 1.2 - lse[1]]]
    # smoothed target: (1 - eps) on the true class + eps / K on every class
    per = [-(1 - eps) * logp[i][t] - eps / 2 * sum(logp[i]) for i, t in enumerate([0, 1])]
    loss = create_loss("ce", num_classes=2, label_smoothing=eps)(logits, target)
    assert loss.item() == pytest.approx(sum(per) / 2, abs=1e-6)


def test_ce_class_balanced_is_the_weighted_mean() -> None:
    logits = torch.tensor([[2.0, 0.5], [0.1, 1.2]])
    target = torch.tensor([0, 1])
    l0 = math.log(math.exp(2.0) + math.exp(0.5)) - 2.0
    l1 = math.log(math.exp(0.1) + math.exp(1.2)) - 1.2
    w0, w1 = 0.776042, 1.223958  # counts [900, 100], beta 0.99 (see test_class_balanced_weights_by_hand)
    loss = create_loss("ce", 2, class_counts=[900, 100], class_balanced=True, beta=0.99)(logits, target)
    assert loss.item() == pytest.approx((w0 * l0 + w1 * l1) / (w0 + w1), abs=1e-5)


def test_focal_with_gamma_zero_equals_ce() -> None:
    torch.manual_seed(0)
    logits, target = torch.randn(16, 3) * 3, torch.randint(0, 3, (16,))
    focal = create_loss("focal", num_classes=3, gamma=0.0)(logits, target)
    ce = create_loss("ce", num_classes=3)(logits, target)
    assert focal.item() == pytest.approx(ce.item(), rel=1e-6)


def test_focal_gamma_two_matches_hand_computation() -> None:
    # p(class 1) = 0.8 for both samples; sample 0 is positive (p_t = 0.8), sample 1 negative (p_t = 0.2).
    # FL0 = -(1-0.8)^2 ln 0.8 = 0.04 * 0.223144 = 0.0089257
    # FL1 = -(1-0.2)^2 ln 0.2 = 0.64 * 1.609438 = 1.0300403      mean = 0.5194830
    logits, target = binary_logits([0.8, 0.8]), torch.tensor([1, 0])
    loss = create_loss("focal", num_classes=2, gamma=2.0)(logits, target)
    assert loss.item() == pytest.approx(0.5194830, abs=1e-6)


def test_focal_alpha_weights_the_positive_class() -> None:
    logits, target = binary_logits([0.8, 0.8]), torch.tensor([1, 0])
    # alpha = 0.25 on the positive class, 0.75 on the negative: (0.25*0.0089257 + 0.75*1.0300403) / 2 = 0.3873808
    loss = create_loss("focal", num_classes=2, gamma=2.0, alpha=0.25)(logits, target)
    assert loss.item() == pytest.approx(0.3873808, abs=1e-6)
    as_list = create_loss("focal", num_classes=2, gamma=2.0, alpha=[0.75, 0.25])(logits, target)
    assert as_list.item() == pytest.approx(0.3873808, abs=1e-6)
    # positive_index = 0 turns it around: (0.75*0.0089257 + 0.25*1.0300403) / 2 = 0.1321022
    flipped = create_loss("focal", num_classes=2, gamma=2.0, alpha=0.25, positive_index=0)(logits, target)
    assert flipped.item() == pytest.approx(0.1321022, abs=1e-6)


def test_focal_class_balanced_multiplies_alpha() -> None:
    logits, target = binary_logits([0.8, 0.8]), torch.tensor([1, 0])
    # weights [0.776042, 1.223958] (beta 0.99) times alpha [0.75, 0.25]:
    # (0.25*1.223958*0.0089257 + 0.75*0.776042*1.0300403) / 2 = (0.0027311 + 0.5995157) / 2 = 0.3011234
    loss = create_loss("focal", 2, class_counts=[900, 100], gamma=2.0, alpha=0.25, class_balanced=True, beta=0.99)
    assert loss(logits, target).item() == pytest.approx(0.3011234, abs=1e-5)


def test_soft_f1_binary_matches_hand_computation() -> None:
    # p = [0.9, 0.2, 0.6], y = [1, 0, 0]: tp = 0.9, fp = 0.2 + 0.6 = 0.8, fn = 0.1
    # F1 = 1.8 / (1.8 + 0.8 + 0.1) = 2/3, loss = 1/3
    logits, target = binary_logits([0.9, 0.2, 0.6]), torch.tensor([1, 0, 0])
    loss = create_loss("soft_f1", num_classes=2)(logits, target)
    assert loss.item() == pytest.approx(1 / 3, abs=1e-6)
    # positive_index = 0: p0 = [0.1, 0.8, 0.4], y0 = [0, 1, 1]: tp = 1.2, fp = 0.1, fn = 0.8; F1 = 2.4/3.3
    flipped = create_loss("soft_f1", num_classes=2, positive_index=0)(logits, target)
    assert flipped.item() == pytest.approx(1 - 2.4 / 3.3, abs=1e-6)


def test_soft_f1_multiclass_is_macro_mean() -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]], dtype=torch.float64)
    target = torch.tensor([0, 2])
    # class 0: tp 0.7, fp 0.1, fn 0.3 -> 1.4/1.8; class 1: tp 0 -> 0; class 2: tp 0.3, fp 0.1, fn 0.7 -> 0.6/1.4
    # loss = 1 - (0.777778 + 0 + 0.428571) / 3 = 0.5978836
    loss = create_loss("soft_f1", num_classes=3)(probs.log(), target)
    assert loss.item() == pytest.approx(0.5978836, abs=1e-6)


def test_class_balanced_weights_by_hand() -> None:
    # beta 0.99: 0.99^900 = 1.18e-4, 0.99^100 = 0.366032 -> raw w = 0.01 / (1 - 0.99^n) = [0.010001, 0.015774]
    # rescaled to sum to 2 -> [0.776042, 1.223958]
    w = class_balanced_weights([900, 100], beta=0.99)
    assert w.tolist() == pytest.approx([0.776042, 1.223958], abs=1e-5)
    # beta 0.999: 0.999^900 = 0.406386, 0.999^100 = 0.904792 -> raw w = [0.0016846, 0.0105033] -> [0.276437, 1.723563]
    w = class_balanced_weights([900, 100], beta=0.999)
    assert w.tolist() == pytest.approx([0.276437, 1.723563], abs=1e-5)


def test_class_balanced_weights_limits() -> None:
    assert class_balanced_weights([900, 100], beta=0.0).tolist() == [1.0, 1.0]
    # beta -> 1: inverse frequency, w ratio 900/100 = 9 -> [0.2, 1.8]
    assert class_balanced_weights([900, 100], beta=1 - 1e-9).tolist() == pytest.approx([0.2, 1.8], abs=1e-4)
    with pytest.raises(ConfigError, match="beta"):
        class_balanced_weights([900, 100], beta=1.0)
    with pytest.raises(ConfigError, match="every class"):
        class_balanced_weights([900, 0])


@pytest.mark.parametrize(
    "name,params",
    [
        ("ce", {}),
        ("ce", {"label_smoothing": 0.1, "class_balanced": True}),
        ("focal", {"gamma": 2.0, "alpha": [0.2, 0.3, 0.5]}),
        ("focal", {"gamma": 0.5, "class_balanced": True}),
        ("soft_f1", {}),
    ],
)
def test_gradients_are_finite_for_extreme_logits(name: str, params: dict) -> None:
    logits = torch.tensor([[50.0, -50.0, 0.0], [-50.0, 50.0, -50.0], [50.0, -50.0, -50.0]], requires_grad=True)
    target = torch.tensor([0, 2, 1])  # one very right, two very wrong
    loss = create_loss(name, num_classes=3, class_counts=[10, 20, 30], **params)(logits, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match=r"unknown loss 'dice'; valid: ce, focal, soft_f1"):
        create_loss("dice", num_classes=2)


def test_bad_params_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"unknown \['gama'\] for loss 'focal'; valid: gamma, alpha"):
        create_loss("focal", num_classes=2, gama=2.0)
    with pytest.raises(ConfigError, match="needs class_counts"):
        create_loss("ce", num_classes=2, class_balanced=True)
    with pytest.raises(ConfigError, match="3 entries for 2 classes"):
        create_loss("focal", num_classes=2, class_counts=[1, 2, 3], class_balanced=True)
    with pytest.raises(ConfigError, match="single float needs 2 classes"):
        create_loss("focal", num_classes=3, alpha=0.25)
