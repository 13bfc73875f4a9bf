"""FGSM/PGD in unit grey space: eps=0 is the identity, perturbations stay inside the ball, the loss goes up."""

import pytest
import torch
import torch.nn.functional as F

from medclf.contract import DataContract
from medclf.data.transforms import make_transform
from medclf.errors import MedclfError
from medclf.robust.attacks import fgsm, frozen_bn_stats, parse_eps, pgd


def small_cnn() -> torch.nn.Module:
    # attacks only need a differentiable module; a small CNN with batch norm keeps these tests fast
    return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(128, 2))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = small_cnn().eval()
    contract = DataContract("small", 2, ["normal", "pneumonia"], 1, 32, 1, [0.5], [0.25])
    transform = make_transform(contract, train=False)
    images = torch.randint(0, 256, (6, 32, 32), dtype=torch.uint8)
    x = transform.unit(images)
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    return model, transform, x, y


def per_sample_loss(model, transform, x, y):
    with torch.no_grad():
        return F.cross_entropy(model(transform.normalise(x)), y, reduction="none")


def test_parse_eps_reads_fractions_and_rejects_grey_levels():
    assert parse_eps("0.5/255, 1/255,2/255") == [0.5 / 255, 1 / 255, 2 / 255]
    assert parse_eps("0,0.01") == [0.0, 0.01]
    with pytest.raises(MedclfError, match="--eps: 2 is outside"):
        parse_eps("2")
    with pytest.raises(MedclfError, match="'one' is not a number"):
        parse_eps("1/255,one")


@pytest.mark.parametrize("attack", [pgd, fgsm])
def test_eps_zero_leaves_inputs_unchanged(setup, attack):
    model, transform, x, y = setup
    adv = attack(model, x, y, 0.0, transform.normalise, steps=5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(adv, x)


@pytest.mark.parametrize("eps", [1 / 255, 4 / 255])
def test_pgd_stays_in_ball_and_raises_loss(setup, eps):
    model, transform, x, y = setup
    adv = pgd(model, x, y, eps, transform.normalise, steps=5, generator=torch.Generator().manual_seed(0))
    assert adv.shape == x.shape
    assert (adv - x).abs().max().item() <= eps + 1e-6
    assert adv.min().item() >= 0.0 and adv.max().item() <= 1.0
    clean, attacked = per_sample_loss(model, transform, x, y), per_sample_loss(model, transform, adv, y)
    assert torch.all(attacked >= clean - 1e-6)  # never decreases, image by image
    assert attacked.mean() > clean.mean() + 1e-4  # and actually increases


def test_fgsm_moves_every_free_pixel_by_eps(setup):
    model, transform, x, y = setup
    eps = 2 / 255
    adv = fgsm(model, x, y, eps, transform.normalise)
    delta = (adv - x).abs()
    inside = (x > eps) & (x < 1 - eps)  # pixels the [0, 1] clamp cannot touch
    assert torch.allclose(delta[inside], torch.full_like(delta[inside], eps), atol=1e-6)
    assert per_sample_loss(model, transform, adv, y).mean() > per_sample_loss(model, transform, x, y).mean()


@pytest.mark.slow
def test_frozen_bn_stats_keeps_running_averages():
    model = small_cnn().train()
    bn = model[1]
    before, momentum = bn.running_mean.clone(), bn.momentum
    with frozen_bn_stats(model):
        model(torch.randn(4, 1, 32, 32))
    assert torch.equal(bn.running_mean, before) and bn.momentum == momentum
    model(torch.randn(4, 1, 32, 32))
    assert not torch.equal(bn.running_mean, before)


@pytest.mark.slow  # ~2 s CPU on the loaded 2-core machine: too slow for make test-fast
def test_pgd_attacks_an_ensemble_through_all_members(setup):
    from medclf.models.ensemble import Ensemble

    model, transform, x, y = setup
    contract = DataContract("small", 2, ["normal", "pneumonia"], 1, 32, 1, [0.5], [0.25])
    torch.manual_seed(1)
    members = [model, small_cnn().eval()]
    ensemble = Ensemble(members, [contract, contract], contract)  # forward: log of the mean probabilities
    eps = 4 / 255
    adv = pgd(ensemble, x, y, eps, transform.normalise, steps=5, generator=torch.Generator().manual_seed(0))
    assert (adv - x).abs().max().item() <= eps + 1e-6
    clean, attacked = per_sample_loss(ensemble, transform, x, y), per_sample_loss(ensemble, transform, adv, y)
    assert torch.all(attacked >= clean - 1e-6) and attacked.mean() > clean.mean()
    for m in members:
        m.zero_grad()
    F.cross_entropy(ensemble(transform.normalise(adv)), y).backward()
    assert all(m[0].weight.grad is not None and m[0].weight.grad.abs().sum() > 0 for m in members)
