"""AdvProp: auxiliary batch norms learn other statistics than the main ones; checkpoints hold the plain model."""

import pytest
import torch

from medclf.config import load_config
from medclf.data.transforms import make_transform
from medclf.errors import ConfigError
from medclf.models import create_model, load_checkpoint, save_checkpoint
from medclf.robust.adversarial import create_adversarial_objective
from medclf.robust.advprop import AdvPropModel, DualBatchNorm2d


def make(seed=0):
    torch.manual_seed(seed)
    return create_model("resnet18", num_classes=2, input_size=32)


@pytest.mark.slow
def test_advprop_step_separates_aux_statistics_and_saves_a_clean_checkpoint(tmp_path):
    plain_keys = list(make().state_dict())
    wrapper = AdvPropModel(make())
    duals = wrapper.dual_bns()
    assert len(duals) == 20 == len(wrapper.aux_bn)  # resnet18: bn1 + 2 per block x 8 + 3 downsample
    assert list(wrapper.module.state_dict()) == plain_keys  # the classifier's keys do not change
    n_plain = sum(p.numel() for p in make().parameters())
    n_aux = sum(2 * m.num_features for m in duals)  # weight + bias per auxiliary BN
    assert sum(p.numel() for p in wrapper.parameters()) == n_plain + n_aux

    cfg = load_config(None, ["train.adversarial=advprop", "train.adv_eps=0.03", "train.adv_steps=2"])
    transform = make_transform(wrapper.contract, train=False)
    objective = create_adversarial_objective(cfg.train, torch.nn.CrossEntropyLoss(), transform)
    optimizer = torch.optim.SGD(wrapper.parameters(), lr=0.1)
    x = transform.unit(torch.randint(0, 256, (8, 32, 32), dtype=torch.uint8))
    y = torch.tensor([0, 1] * 4)
    bn = wrapper.module.model.bn1
    aux_weight_before = bn.aux.weight.detach().clone()
    wrapper.train()
    loss = objective(wrapper, x, y)
    loss.backward()
    optimizer.step()
    assert isinstance(bn, DualBatchNorm2d) and not bn.aux_active
    # both started at mean 0 / var 1; main saw one clean batch, aux one adversarial batch (attack steps frozen)
    assert not torch.allclose(bn.running_mean, bn.aux.running_mean)
    assert not torch.allclose(bn.running_var, bn.aux.running_var)
    assert int(bn.num_batches_tracked) == 1 and int(bn.aux.num_batches_tracked) == 1
    assert not torch.equal(bn.aux.weight, aux_weight_before)  # the optimizer trains the auxiliary BNs

    save_checkpoint(tmp_path / "best.pt", wrapper, wrapper.contract, {})
    model, _, _ = load_checkpoint(tmp_path / "best.pt")  # strict: no aux keys, no missing keys
    wrapper.eval()
    probe = transform.normalise(x)
    with torch.no_grad():
        assert torch.allclose(model(probe), wrapper(probe), atol=1e-5)  # inference uses the main BNs
        with wrapper.auxiliary():
            assert not torch.allclose(model(probe), wrapper(probe), atol=1e-3)


def test_advprop_refuses_a_model_without_batch_norm():
    with pytest.raises(ConfigError, match="needs a model with batch norm"):
        AdvPropModel(torch.nn.Sequential(torch.nn.Linear(4, 2)))


def test_unknown_adversarial_method_lists_the_valid_ones():
    cfg = load_config(None, ["train.adversarial=trades"])
    with pytest.raises(ConfigError, match="valid: fgsm, pgd, advprop"):
        create_adversarial_objective(cfg.train, torch.nn.CrossEntropyLoss(), None)
