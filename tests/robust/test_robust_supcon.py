"""SupCon loss against a hand computation; the linear probe freezes everything but the classifier head."""

import math

import pytest
import torch

from medclf.models import create_model
from medclf.robust.contrastive import freeze_for_linear_probe, supcon_loss


def test_supcon_matches_hand_computed_value_on_four_samples():
    # unit vectors z1=(1,0), z2=(.6,.8) of class 0 and z3=(0,1), z4=(-.6,.8) of class 1 (z2, z4 scaled: the loss
    # normalises). Cosines: s12=.6 s13=0 s14=-.6 s23=.8 s24=.28 s34=.8; with T=0.5 the logits are twice these.
    # Each anchor has one positive: l_i = -s_ip/T + log sum_{a != i} exp(s_ia/T).
    z = torch.tensor([[1.0, 0.0], [1.8, 2.4], [0.0, 1.0], [-0.3, 0.4]])
    labels = torch.tensor([0, 0, 1, 1])
    e = math.exp
    l1 = -1.2 + math.log(e(1.2) + e(0.0) + e(-1.2))
    l2 = -1.2 + math.log(e(1.2) + e(1.6) + e(0.56))
    l3 = -1.6 + math.log(e(0.0) + e(1.6) + e(1.6))
    l4 = -1.6 + math.log(e(-1.2) + e(0.56) + e(1.6))
    expected = (l1 + l2 + l3 + l4) / 4
    assert expected == pytest.approx(0.6429, abs=1e-4)  # (0.3307 + 1.1050 + 0.7893 + 0.3466) / 4
    assert supcon_loss(z, labels, temperature=0.5).item() == pytest.approx(expected, abs=1e-5)


def test_supcon_prefers_embeddings_that_cluster_by_class():
    labels = torch.tensor([0, 0, 1, 1])
    clustered = torch.tensor([[1.0, 0.1], [1.0, -0.1], [-1.0, 0.1], [-1.0, -0.1]])
    mixed = torch.tensor([[1.0, 0.1], [-1.0, 0.1], [1.0, -0.1], [-1.0, -0.1]])
    assert supcon_loss(clustered, labels).item() < supcon_loss(mixed, labels).item()


@pytest.mark.slow
def test_linear_probe_trains_only_the_head_and_keeps_bn_statistics():
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=2, input_size=32)
    freeze_for_linear_probe(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["model.fc.weight", "model.fc.bias"]
    conv, stats = model.model.conv1.weight.clone(), model.model.bn1.running_mean.clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    assert torch.equal(model.model.conv1.weight, conv) and torch.equal(model.model.bn1.running_mean, stats)
    assert model.model.conv1.weight.grad is None
