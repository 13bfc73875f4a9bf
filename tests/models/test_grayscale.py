"""in_chans=1: the first layer's filters summed over RGB, so a grey image replicated to 3 channels and the
single grey channel give the same output."""

import pytest
import torch

from medclf.errors import MedclfError
from medclf.models import create_model

CASES = [("resnet18", "conv1", 64), ("timm:resnet10t", "conv1.0", 64),
         ("timm:vit_tiny_patch16_224", "patch_embed.proj", 32)]


@pytest.mark.parametrize("name, conv, size", CASES, ids=[c[0] for c in CASES])
def test_one_channel_model_sums_the_three_channel_filters(name, conv, size):
    torch.manual_seed(0)
    rgb = create_model(name, 2, in_chans=3, input_size=size).eval()
    torch.manual_seed(0)
    grey = create_model(name, 2, in_chans=1, input_size=size).eval()
    w3 = rgb.model.get_submodule(conv).weight
    w1 = grey.model.get_submodule(conv).weight
    assert w3.shape[1] == 3 and w1.shape[1] == 1
    torch.testing.assert_close(w1, w3.sum(dim=1, keepdim=True), rtol=0, atol=0)
    # every other tensor is the same
    s3, s1 = rgb.state_dict(), grey.state_dict()
    for k in s3:
        if k != f"model.{conv}.weight":
            assert torch.equal(s3[k], s1[k]), k
    x = torch.rand(2, 1, size, size)
    with torch.no_grad():
        torch.testing.assert_close(grey(x), rgb(x.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-5)
    assert grey.contract.in_chans == 1 and grey.build_kwargs["in_chans"] == 1


def test_one_channel_normalisation_is_the_channel_mean():
    c = create_model("resnet18", 2, in_chans=1).contract
    assert c.mean == pytest.approx([(0.485 + 0.456 + 0.406) / 3])
    assert c.std == pytest.approx([(0.229 + 0.224 + 0.225) / 3])
    assert create_model("timm:vit_tiny_patch16_224", 2, in_chans=1, input_size=32).contract.mean == [0.5]


def test_three_channel_weights_file_into_one_channel_model(tmp_path):
    torch.manual_seed(3)
    src = create_model("resnet18", 2)
    torch.save(src.model.state_dict(), tmp_path / "rgb.pth")
    grey = create_model("resnet18", 2, in_chans=1, weights=tmp_path / "rgb.pth")
    torch.testing.assert_close(grey.model.conv1.weight, src.model.conv1.weight.sum(1, keepdim=True), rtol=0, atol=0)
    torch.testing.assert_close(grey.model.fc.weight, src.model.fc.weight, rtol=0, atol=0)


def test_one_channel_weights_file_needs_in_chans_1(tmp_path):
    grey = create_model("resnet18", 2, in_chans=1)
    torch.save(grey.model.state_dict(), tmp_path / "grey.pth")
    with pytest.raises(MedclfError, match=r"grey.pth: its first layer takes 1 channel\(s\) but the model takes 3; "
                                          r"set model.in_chans=1"):
        create_model("resnet18", 2, in_chans=3, weights=tmp_path / "grey.pth")
