import pytest
import torch

from medclf.errors import ConfigError
from medclf.models import create_model, param_groups


def by_name(groups):
    out = {}
    for g in groups:
        for n in g["param_names"]:
            assert n not in out, f"{n} in two groups"
            out[n] = (g["lr"], g["weight_decay"])
    return out


def test_vit_layer_decay(built):
    model = built("timm:vit_tiny_patch16_224", input_size=64)  # 12 blocks: L = 13
    groups = param_groups(model, lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    lr = by_name(groups)
    assert sorted(lr) == sorted(n for n, _ in model.named_parameters())
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    expect = {
        "model.cls_token": (1e-3 * 0.5**13, 0.0),
        "model.pos_embed": (1e-3 * 0.5**13, 0.0),
        "model.patch_embed.proj.weight": (1e-3 * 0.5**13, 0.05),
        "model.patch_embed.proj.bias": (1e-3 * 0.5**13, 0.0),
        "model.blocks.0.attn.qkv.weight": (1e-3 * 0.5**12, 0.05),
        "model.blocks.0.norm1.weight": (1e-3 * 0.5**12, 0.0),
        "model.blocks.5.mlp.fc1.weight": (1e-3 * 0.5**7, 0.05),
        "model.blocks.11.mlp.fc2.weight": (1e-3 * 0.5**1, 0.05),
        "model.blocks.11.mlp.fc2.bias": (1e-3 * 0.5**1, 0.0),
        "model.norm.weight": (1e-3, 0.0),
        "model.head.weight": (1e-3, 0.05),
        "model.head.bias": (1e-3, 0.0),
    }
    for name, (want_lr, want_wd) in expect.items():
        assert lr[name][0] == pytest.approx(want_lr, rel=1e-12), name
        assert lr[name][1] == want_wd, name


def test_no_layer_decay_two_groups(built):
    model = built("timm:vit_tiny_patch16_224", input_size=64)
    groups = param_groups(model, lr=3e-4, weight_decay=0.05)
    assert [g["lr"] for g in groups] == [3e-4, 3e-4]
    no_decay = {n for g in groups if g["weight_decay"] == 0.0 for n in g["param_names"]}
    expected = {n for n, p in model.named_parameters() if p.ndim <= 1} | {"model.cls_token", "model.pos_embed"}
    assert no_decay == expected


def test_torchvision_vit_layers(built):
    model = built("vit_b_16", input_size=64)
    lr = by_name(param_groups(model, lr=1.0, weight_decay=0.1, layer_decay=0.5))
    assert lr["model.class_token"] == (0.5**13, 0.0)
    assert lr["model.encoder.pos_embedding"] == (0.5**13, 0.0)
    assert lr["model.conv_proj.weight"] == (0.5**13, 0.1)
    assert lr["model.encoder.layers.encoder_layer_0.mlp.0.weight"] == (0.5**12, 0.1)
    assert lr["model.encoder.layers.encoder_layer_11.ln_1.weight"] == (0.5, 0.0)
    assert lr["model.encoder.ln.weight"] == (1.0, 0.0)
    assert lr["model.heads.head.weight"] == (1.0, 0.1)


def test_cnn_layer_decay_per_stage():
    model = create_model("resnet18", 2)
    lr = by_name(param_groups(model, lr=1.0, weight_decay=0.01, layer_decay=0.8))  # 4 stages: L = 5
    assert lr["model.conv1.weight"] == (pytest.approx(0.8**5), 0.01)
    assert lr["model.bn1.weight"] == (pytest.approx(0.8**5), 0.0)
    assert lr["model.layer1.0.conv1.weight"] == (pytest.approx(0.8**4), 0.01)
    assert lr["model.layer3.1.bn2.bias"] == (pytest.approx(0.8**2), 0.0)
    assert lr["model.layer4.0.downsample.0.weight"] == (pytest.approx(0.8), 0.01)
    assert lr["model.fc.weight"] == (1.0, 0.01)


@pytest.mark.slow  # ~2 s CPU on the loaded 2-core machine: too slow for make test-fast
def test_groups_drive_an_optimizer_step():
    model = create_model("resnet18", 2)
    opt = torch.optim.AdamW(param_groups(model, lr=1e-3, weight_decay=0.05, layer_decay=0.7))
    before = model.model.fc.weight.detach().clone()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    assert not torch.equal(model.model.fc.weight, before)
    frozen = [g["lr"] for g in opt.param_groups]
    assert frozen == sorted(frozen)  # stem first, head last


def test_frozen_parameters_are_left_out_and_bad_decay_refused():
    model = create_model("resnet18", 2)
    for p in model.model.conv1.parameters():
        p.requires_grad = False
    names = by_name(param_groups(model, lr=1.0, weight_decay=0.0))
    assert "model.conv1.weight" not in names and "model.fc.weight" in names
    with pytest.raises(ConfigError, match=r"train.layer_decay must be in \(0, 1\], got 1.5"):
        param_groups(model, lr=1.0, weight_decay=0.0, layer_decay=1.5)
