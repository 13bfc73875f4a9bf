import logging
import time

import pytest
import torch
import torchvision

from medclf.errors import MedclfError
from medclf.models import create_model, load_weights, save_checkpoint
from medclf.models.weights import reachable


def test_pretrained_unavailable_fails_fast_with_a_clear_message(no_network_env):
    t0 = time.perf_counter()
    with pytest.raises(MedclfError) as e:
        create_model("resnet18", 2, pretrained=True)
    assert time.perf_counter() - t0 < 10
    msg = str(e.value)
    cached = no_network_env / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert msg.startswith("pretrained weights for 'resnet18' (torchvision ResNet18_Weights.IMAGENET1K_V1) "
                          "could not be loaded: not in the cache and download.pytorch.org is unreachable")
    assert f"looked in {cached}" in msg
    assert f"download https://download.pytorch.org/models/resnet18-f37072fd.pth to {cached}" in msg
    assert "set model.weights=PATH" in msg


def test_pretrained_unavailable_offline_flag(no_network_env, monkeypatch):
    monkeypatch.setenv("MEDCLF_OFFLINE", "1")
    with pytest.raises(MedclfError, match="not in the cache and MEDCLF_OFFLINE is set"):
        create_model("resnet18", 2, pretrained=True)


def test_timm_pretrained_unavailable(no_network_env, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(MedclfError) as e:
        create_model("timm:resnet10t", 2, pretrained=True)
    assert time.perf_counter() - t0 < 10
    msg = str(e.value)
    assert msg.startswith("pretrained weights for 'timm:resnet10t' could not be loaded: not in the cache and "
                          "HF_HUB_OFFLINE/MEDCLF_OFFLINE is set")
    assert str(no_network_env / "hf" / "hub" / "models--timm--resnet10t.c3_in1k") in msg
    assert "huggingface-cli download timm/resnet10t.c3_in1k" in msg and "set model.weights=PATH" in msg


def test_reachable_is_false_for_a_closed_port(no_network_env):
    t0 = time.perf_counter()
    assert reachable("https://download.pytorch.org/models/x.pth") is False  # via the closed proxy port
    assert time.perf_counter() - t0 < 5


def test_pretrained_from_the_torch_hub_cache(no_network_env):
    """A file in the torch hub cache is used without any network (here random weights under the real name)."""
    torch.manual_seed(1)
    imagenet = torchvision.models.resnet18(num_classes=1000)
    cache = no_network_env / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(imagenet.state_dict(), cache / "resnet18-f37072fd.pth")
    model = create_model("resnet18", 2, pretrained=True)
    torch.testing.assert_close(model.model.conv1.weight, imagenet.conv1.weight, rtol=0, atol=0)
    torch.testing.assert_close(model.model.layer4[1].bn2.running_var, imagenet.layer4[1].bn2.running_var)
    assert model.model.fc.weight.shape == (2, 512)  # the 1000-class head is not loaded


def fake_hf_cache(root, repo: str, state: dict) -> None:
    """The Hugging Face hub cache layout: models--org--name/{refs/main, snapshots/<commit>/model.safetensors}."""
    from safetensors.torch import save_file

    entry = root / "hf" / "hub" / f"models--{repo.replace('/', '--')}"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text("0123abc")
    (entry / "snapshots" / "0123abc").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, entry / "snapshots" / "0123abc" / "model.safetensors")


def test_pretrained_from_the_hugging_face_cache(no_network_env):
    import timm

    torch.manual_seed(2)
    imagenet = timm.create_model("resnet10t")
    fake_hf_cache(no_network_env, "timm/resnet10t.c3_in1k", imagenet.state_dict())
    model = create_model("timm:resnet10t", 2, pretrained=True)
    torch.testing.assert_close(model.model.conv1[0].weight, imagenet.conv1[0].weight, rtol=0, atol=0)
    assert model.model.fc.weight.shape == (2, 512)


@pytest.mark.slow  # ~2 s CPU on the loaded 2-core machine: too slow for make test-fast
def test_timm_vit_pretrained_from_the_cache_at_another_size(no_network_env):
    """timm loads the cached file itself (resampling the 14x14 position grid to 2x2) although this model's
    original release is a custom .npz: the Hub copy is a plain state dict."""
    import timm

    torch.manual_seed(3)
    imagenet = timm.create_model("vit_tiny_patch16_224")
    fake_hf_cache(no_network_env, "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k", imagenet.state_dict())
    model = create_model("timm:vit_tiny_patch16_224", 2, pretrained=True, input_size=32, in_chans=1)
    assert model.model.pos_embed.shape == (1, 5, 192)
    torch.testing.assert_close(model.model.pos_embed[0, 0], imagenet.pos_embed[0, 0], rtol=0, atol=0)
    torch.testing.assert_close(model.model.blocks[2].mlp.fc1.weight, imagenet.blocks[2].mlp.fc1.weight, rtol=0, atol=0)
    torch.testing.assert_close(model.model.patch_embed.proj.weight,
                               imagenet.patch_embed.proj.weight.sum(1, keepdim=True), rtol=0, atol=0)


def test_timm_model_without_pretrained_weights(no_network_env):
    with pytest.raises(MedclfError, match="timm has no pretrained weights for 'timm:botnet50ts_256'"):
        create_model("timm:botnet50ts_256", 2, pretrained=True)


def test_weights_file_drops_and_reports_a_head_of_another_size(tmp_path, caplog):
    torch.manual_seed(4)
    imagenet = torchvision.models.resnet18(num_classes=1000)
    torch.save(imagenet.state_dict(), tmp_path / "r18.pth")
    torch.manual_seed(5)
    fresh_fc = create_model("resnet18", 2).model.fc.weight.detach().clone()
    torch.manual_seed(5)
    with caplog.at_level(logging.WARNING, logger="medclf.models"):
        model = create_model("resnet18", 2, pretrained=True, weights=tmp_path / "r18.pth")  # weights win
    torch.testing.assert_close(model.model.layer3[0].conv2.weight, imagenet.layer3[0].conv2.weight, rtol=0, atol=0)
    torch.testing.assert_close(model.model.fc.weight, fresh_fc, rtol=0, atol=0)  # head kept its init
    assert "['fc.bias', 'fc.weight'] does not fit resnet18's head; dropped" in caplog.text
    assert load_weights(model, tmp_path / "r18.pth") == ["fc.bias", "fc.weight"]


@pytest.mark.slow  # ~2 s CPU on the loaded 2-core machine: too slow for make test-fast
def test_weights_file_with_the_same_head_loads_fully(tmp_path):
    torch.manual_seed(6)
    src = create_model("resnet18", 2).eval()
    torch.save(src.state_dict(), tmp_path / "wrapped.pt")  # medclf wrapper keys: model.<key>
    model = create_model("resnet18", 2, weights=tmp_path / "wrapped.pt").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), src(x))


def test_weights_from_a_medclf_checkpoint(tmp_path):
    torch.manual_seed(7)
    src = create_model("timm:resnet10t", 2).eval()
    save_checkpoint(tmp_path / "best.pt", src, src.contract, config={})
    model = create_model("timm:resnet10t", 2, weights=tmp_path / "best.pt").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), src(x))


@pytest.mark.slow  # ~4 s CPU on the loaded 2-core machine: too slow for make test-fast
def test_safetensors_vit_weights_at_another_size(tmp_path):
    """A timm ViT state dict for 32 px loads into a 64 px model: position embeddings resampled, class kept."""
    from safetensors.torch import save_file

    src = create_model("timm:vit_tiny_patch16_224", 2, input_size=32)
    state = {k: v.detach().clone() for k, v in src.model.state_dict().items()}
    grid_value = torch.randn(192)
    state["pos_embed"][0, 1:] = grid_value  # a constant grid stays constant under bicubic resampling
    save_file(state, tmp_path / "vit32.safetensors")
    model = create_model("timm:vit_tiny_patch16_224", 2, input_size=64, weights=tmp_path / "vit32.safetensors")
    pos = model.model.pos_embed
    assert pos.shape == (1, 17, 192)
    torch.testing.assert_close(pos[0, 0], state["pos_embed"][0, 0], rtol=0, atol=0)
    torch.testing.assert_close(pos[0, 1:], grid_value.expand(16, -1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.model.blocks[3].attn.qkv.weight, state["blocks.3.attn.qkv.weight"], rtol=0, atol=0)


def test_torchvision_vit_pretrained_224_weights_interpolated_to_64(built, tmp_path):
    model = built("vit_b_16", input_size=64)
    state = {k: v.detach().clone() for k, v in model.model.state_dict().items()}
    cls_pos, grid_value = torch.randn(768), torch.randn(768)
    pos224 = torch.empty(1, 197, 768)  # 14 x 14 patches + class token, as in the ImageNet weights
    pos224[0, 0], pos224[0, 1:] = cls_pos, grid_value
    state["encoder.pos_embedding"] = pos224
    torch.save(state, tmp_path / "vit_b_16_224.pth")
    load_weights(model, tmp_path / "vit_b_16_224.pth")
    pos = model.model.encoder.pos_embedding
    assert pos.shape == (1, 17, 768)
    torch.testing.assert_close(pos[0, 0], cls_pos, rtol=0, atol=0)
    torch.testing.assert_close(pos[0, 1:], grid_value.expand(16, -1), rtol=1e-5, atol=1e-5)


def test_weights_of_another_architecture_are_an_error(tmp_path):
    torch.save(torchvision.models.resnet34(num_classes=2).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(MedclfError, match=r"r34.pth does not fit resnet18: unexpected keys \['layer1.2.conv1.weight'"):
        create_model("resnet18", 2, weights=tmp_path / "r34.pth")


def test_weights_file_errors(tmp_path):
    with pytest.raises(MedclfError, match="model.weights: file not found: .*nope.pth"):
        create_model("resnet18", 2, weights=tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(MedclfError, match="model.weights: cannot read .*junk.pth as a weights file"):
        create_model("resnet18", 2, weights=tmp_path / "junk.pth")
    torch.save({"epoch": 3}, tmp_path / "meta.pth")
    with pytest.raises(MedclfError, match="meta.pth holds no state dict"):
        create_model("resnet18", 2, weights=tmp_path / "meta.pth")
