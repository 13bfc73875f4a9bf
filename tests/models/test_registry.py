import pytest
import torch

from medclf.errors import ConfigError
from medclf.models import ClassifierModel, create_model, list_models

IMAGENET_MEAN = [0.485, 0.456, 0.406]

# name, create kwargs, embedding width D, forward_features shape for a 2 x 3 x 64 x 64 batch, default input size
CASES = [
    ("resnet18", {}, 512, (2, 512, 2, 2), 224),
    ("resnet34", {}, 512, (2, 512, 2, 2), 224),
    ("resnet50", {}, 2048, (2, 2048, 2, 2), 224),
    ("densenet121", {}, 1024, (2, 1024, 2, 2), 224),
    ("efficientnet_b0", {}, 1280, (2, 1280, 2, 2), 224),
    ("vit_b_16", {"input_size": 64}, 768, (2, 17, 768), 64),  # 4x4 patches + class token
    ("timm:resnet10t", {}, 512, (2, 512, 2, 2), 176),  # timm's pretrained_cfg input size
    ("timm:vit_tiny_patch16_224", {"input_size": 64}, 192, (2, 17, 192), 64),
]
# ~2-13 s CPU each to build on the loaded 2-core machine: left out of `make test-fast`
HEAVY = {"resnet50", "densenet121", "efficientnet_b0"}
CASE_PARAMS = [pytest.param(*c, id=c[0], marks=pytest.mark.slow if c[0] in HEAVY else ()) for c in CASES]


def cam_layer(model, name):
    m = model.model
    return {
        "resnet18": lambda: m.layer4[-1], "resnet34": lambda: m.layer4[-1], "resnet50": lambda: m.layer4[-1],
        "densenet121": lambda: m.features.norm5, "efficientnet_b0": lambda: m.features[-1],
        "vit_b_16": lambda: m.encoder.layers[-1].ln_1, "timm:resnet10t": lambda: m.layer4,
        "timm:vit_tiny_patch16_224": lambda: m.blocks[-1].norm1,
    }[name]()


def test_list_models():
    assert list_models() == ["densenet121", "efficientnet_b0", "resnet18", "resnet34", "resnet50", "vit_b_16"]


@pytest.mark.parametrize("name, kw, dim, feat_shape, size", CASE_PARAMS)
def test_every_model_builds_and_splits_features_and_head(built, name, kw, dim, feat_shape, size):
    model = built(name, **kw)
    assert isinstance(model, ClassifierModel)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
        emb = model.embed(x)
        assert logits.shape == (2, 3)
        assert tuple(features.shape) == feat_shape
        torch.testing.assert_close(model.forward_head(features), logits, rtol=0, atol=0)
        assert emb.shape == (2, dim) and model.num_features == dim
        torch.testing.assert_close(emb, model.pre_logits(features), rtol=0, atol=0)
    assert model.is_vit == (len(feat_shape) == 3)
    assert model.cam_target_layers() == [cam_layer(model, name)]
    c = model.contract
    assert (c.model_name, c.num_classes, c.label_names, c.positive_index) == (name, 3, ["class_0", "class_1",
                                                                                       "class_2"], 1)
    assert (c.input_size, c.in_chans, c.threshold, c.ood) == (size, 3, 0.5, None)
    assert c.mean == ([0.5, 0.5, 0.5] if name == "timm:vit_tiny_patch16_224" else IMAGENET_MEAN)
    assert model.build_kwargs["input_size"] == size


@pytest.mark.parametrize("name, kw, dim, feat_shape, size", CASE_PARAMS)
def test_cam_target_output_and_reshape(built, name, kw, dim, feat_shape, size):
    """What a CAM sees: the target layer's output, made a B x C x h x w map; for ViTs with gradients on
    the patch tokens (which is why the target is the last block's norm1, not the final norm)."""
    model = built(name, **kw)
    seen = {}
    layer = model.cam_target_layers()[0]
    handle = layer.register_forward_hook(lambda m, i, o: seen.update(out=o))
    try:
        x = torch.randn(2, 3, 64, 64)
        emb = model.embed(x)  # what the head sees (torchvision zero-initialises its ViT head)
    finally:
        handle.remove()
    out = seen["out"]
    transform = model.cam_reshape_transform
    if not model.is_vit:
        assert transform is None and out.shape[0] == 2 and out.ndim == 4 and out.shape[-2:] == (2, 2)
        return
    grid = transform(out)
    assert grid.shape == (2, dim, 4, 4)
    # token 1 + 4*i + j (after the class token) is grid cell (i, j)
    torch.testing.assert_close(grid[:, :, 2, 3], out[:, 1 + 4 * 2 + 3, :], rtol=0, atol=0)
    # a random direction: the sum of a LayerNorm output is constant, so its gradient would be zero
    grad = torch.autograd.grad((emb * torch.randn_like(emb)).sum(), out)[0]
    assert grad[:, 1:].abs().sum() > 0


def test_feature_stages(built):
    assert [n for n, _ in built("resnet18").feature_stages()] == ["layer1", "layer2", "layer3", "layer4"]
    assert [n for n, _ in built("densenet121").feature_stages()] == [f"denseblock{i}" for i in range(1, 5)]
    assert [n for n, _ in built("efficientnet_b0").feature_stages()] == [f"features.{i}" for i in range(1, 8)]
    assert [n for n, _ in built("timm:resnet10t").feature_stages()] == ["act1", "layer1", "layer2", "layer3", "layer4"]
    vit = built("timm:vit_tiny_patch16_224", input_size=64)
    assert [n for n, _ in vit.feature_stages()] == [f"blocks.{i}" for i in range(12)]
    assert len(built("vit_b_16", input_size=64).feature_stages()) == 12


def test_timm_vit_at_32px_has_a_2x2_grid():
    model = create_model("timm:vit_tiny_patch16_224", 2, input_size=32).eval()
    with torch.no_grad():
        tokens = model.forward_features(torch.randn(1, 3, 32, 32))
    assert tokens.shape == (1, 5, 192)
    assert model.cam_reshape_transform(tokens).shape == (1, 192, 2, 2)
    assert model.contract.input_size == 32


def test_drop_rate_and_label_names():
    model = create_model("resnet18", 2, drop_rate=0.25, label_names=["normal", "pneumonia"], positive_index=1)
    assert model.head_drop.p == 0.25
    assert model.contract.label_names == ["normal", "pneumonia"]


def test_unknown_name_lists_valid_names():
    with pytest.raises(ConfigError) as e:
        create_model("resnet19", 2)
    msg = str(e.value)
    assert "unknown model 'resnet19'" in msg and "did you mean resnet18" in msg
    assert "densenet121, efficientnet_b0, resnet18, resnet34, resnet50, vit_b_16" in msg
    assert "any timm model as 'timm:<name>'" in msg


def test_unknown_timm_name():
    with pytest.raises(ConfigError, match=r"unknown timm model 'timm:resnet10tt' \(did you mean timm:resnet10t"):
        create_model("timm:resnet10tt", 2)


@pytest.mark.parametrize("kw, message", [
    ({"num_classes": 1}, "num_classes must be an integer >= 2"),
    ({"in_chans": 2}, "model.in_chans must be 1 or 3"),
    ({"label_names": ["a"]}, "1 label_names"),
    ({"positive_index": 5}, r"positive_index 5 is not in \[0, 1\]"),
    ({"drop_rate": 1.0}, r"model.drop_rate must be in \[0, 1\)"),
])
def test_bad_arguments(kw, message):
    args = {"num_classes": 2, **kw}
    with pytest.raises(ConfigError, match=message):
        create_model("resnet18", **args)


@pytest.mark.slow  # ~2 s CPU on the loaded 2-core machine: too slow for make test-fast
def test_vit_input_size_must_fit_the_patch_grid():
    with pytest.raises(ConfigError, match="multiple of its patch size 16, got 40"):
        create_model("vit_b_16", 2, input_size=40)
    with pytest.raises(ConfigError, match="multiple of its patch size 16, got 40"):
        create_model("timm:vit_tiny_patch16_224", 2, input_size=40)


@pytest.mark.parametrize("name, kw", [("resnet18", {}), ("timm:vit_tiny_patch16_224", {"input_size": 64})])
def test_pytorch_grad_cam_needs_no_layer_names(built, name, kw):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = built(name, **kw)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    with GradCAM(model=model, target_layers=model.cam_target_layers(),
                 reshape_transform=model.cam_reshape_transform) as cam:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(0)] * 2)
    assert maps.shape == (2, 64, 64)
    assert maps.max() == pytest.approx(1.0, abs=1e-5)  # grad-cam scales each positive map to [0, 1]
