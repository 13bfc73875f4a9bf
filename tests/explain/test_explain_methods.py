"""Every method gives an input-sized map in [0, 1] for a CNN and a ViT; registry errors; rollout arithmetic;
hooks released; ensembles average their members' maps."""

import numpy as np
import pytest
import torch

from medclf.errors import MedclfError
from medclf.explain.cams import LogOddsTarget
from medclf.explain.featuremaps import feature_grid
from medclf.explain.hooks import capture_outputs, hook_counts
from medclf.explain.registry import compute_maps, list_methods, normalise_maps, parse_methods
from medclf.explain.rollout import attention_probs, rollout
from medclf.models.ensemble import Ensemble, ensemble_contract

NO_HOOKS = {"forward": 0, "forward_pre": 0, "backward": 0}


def _batch(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _check_map(maps: np.ndarray, n: int, size: int) -> None:
    assert maps.shape == (n, size, size) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert np.isclose(maps.reshape(n, -1).max(axis=1), 1.0).all()  # not flat: something stands out


def _check_method(model, method: str, n: int, size: int) -> None:
    """Shape and range for both classes. Gradient CAMs keep only positive evidence (ReLU), and a random
    network's evidence for one class can be negative everywhere, leaving a flat (all-zero) map; with two
    classes the log-odds of one is minus the other's, so for each image one of the two maps must show something."""
    x = _batch(n, size)
    classes = (0, 1) if method in ("gradcam", "gradcam++") else (1,)
    maps = [compute_maps(model, x, method, class_index=k) for k in classes]
    for m in maps:
        assert m.shape == (n, size, size) and m.dtype == np.float32
        assert m.min() >= 0.0 and m.max() <= 1.0
    if method in ("gradcam", "gradcam++"):
        peaks = np.maximum(maps[0].reshape(n, -1).max(1), maps[1].reshape(n, -1).max(1))
        assert np.isclose(peaks, 1.0).all()
    else:  # weights >= 0 (scorecam) or class-agnostic maps: never flat on a real input
        _check_map(maps[0], n, size)
    assert hook_counts(model) == NO_HOOKS
    assert all(p.grad is None for p in model.parameters())  # gradients are not left behind


# ScoreCAM runs one forward pass per channel (~8 s CPU each), Grad-CAM++ ~4 s on the CNN: the fast lane leaves them out
SCORECAM = pytest.param("scorecam", marks=pytest.mark.slow)


@pytest.mark.parametrize("method", ["gradcam", pytest.param("gradcam++", marks=pytest.mark.slow), "eigencam",
                                    "featuremaps", SCORECAM])
def test_cnn_methods_give_input_sized_maps(cnn, method):
    _check_method(cnn, method, 1 if method == "scorecam" else 2, 64)  # ScoreCAM: one forward per channel (512)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "eigencam", "featuremaps", SCORECAM, "rollout"])
def test_vit_methods_give_input_sized_maps(vit, method):
    _check_method(vit, method, 2, 32)
    assert [blk.attn.fused_attn for blk in vit.model.blocks] == _fused_flags(vit)


def _fused_flags(model):
    from timm.layers import use_fused_attn

    return [use_fused_attn()] * len(model.model.blocks)


def test_gradient_cams_work_under_inference_mode(cnn):
    with torch.inference_mode():
        x = _batch(1, 64)
        maps = compute_maps(cnn, x, "gradcam", 1) + compute_maps(cnn, x, "gradcam", 0)
    assert maps.max() > 0


def test_feature_grid_has_a_row_per_stage(cnn, vit):
    image = np.full((32, 32), 128, dtype=np.uint8)
    assert feature_grid(cnn, _batch(1, 64), image).shape == (4 * 128 + 3 * 4, 6 * 128 + 5 * 4, 3)
    # ViT stages are its 12 blocks, tokens reshaped to the 2 x 2 patch grid
    assert feature_grid(vit, _batch(1, 32), image, top_k=2).shape == (12 * 128 + 11 * 4, 2 * 128 + 4, 3)


def test_vit_map_depends_on_the_image(vit):
    maps = compute_maps(vit, _batch(2, 32), "rollout", 1)
    assert not np.allclose(maps[0], maps[1])


@pytest.mark.slow  # ~2 s CPU on the loaded 2-core machine: too slow for make test-fast
def test_torchvision_vit_rollout_reads_per_head_weights(model_factory):
    model = model_factory("vit_b_16", 32)
    with attention_probs(model) as probs:
        model(_batch(1, 32))
        shapes = [tuple(p.shape) for p in probs]
    assert shapes == [(1, 12, 5, 5)] * 12  # 12 blocks, 12 heads, 1 class + 2 x 2 patch tokens
    assert hook_counts(model) == NO_HOOKS
    _check_map(compute_maps(model, _batch(1, 32), "rollout", 1), 1, 32)


def test_rollout_multiplies_residual_augmented_attention():
    a1 = torch.tensor([[0.5, 0.5], [0.0, 1.0]])
    a2 = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    got = rollout([a1[None, None], a2[None, None]])[0]
    # (A + I) / 2 per block, rows already sum to 1; joint = A2' @ A1'
    r1 = torch.tensor([[0.75, 0.25], [0.0, 1.0]])
    r2 = torch.tensor([[1.0, 0.0], [0.25, 0.75]])
    assert torch.allclose(got, r2 @ r1)
    assert torch.allclose(got, torch.tensor([[0.75, 0.25], [0.1875, 0.8125]]))
    with pytest.raises(MedclfError, match="no attention"):
        rollout([])


def test_log_odds_target_is_the_logit_margin():
    assert LogOddsTarget(1)(torch.tensor([1.0, 3.0])).item() == pytest.approx(2.0)
    three = torch.tensor([[0.0, 1.0, 2.0]])
    assert LogOddsTarget(2)(three).item() == pytest.approx(2.0 - np.log(np.exp(0.0) + np.exp(1.0)))


def test_unknown_and_inapplicable_methods_name_the_valid_ones(cnn, vit):
    with pytest.raises(MedclfError, match=r"unknown explanation method 'gradcam\+' \(did you mean gradcam"):
        compute_maps(cnn, _batch(1, 64), "gradcam+", 1)
    with pytest.raises(MedclfError, match="valid: gradcam, gradcam\\+\\+, scorecam, eigencam, featuremaps, rollout"):
        parse_methods("nope", cnn)
    with pytest.raises(MedclfError, match="'rollout' needs a Vision Transformer"):
        compute_maps(cnn, _batch(1, 64), "rollout", 1)
    assert list_methods(cnn) == ["gradcam", "gradcam++", "scorecam", "eigencam", "featuremaps"]
    assert list_methods(vit)[-1] == "rollout"
    assert parse_methods("gradcam, eigencam,gradcam", cnn) == ["gradcam", "eigencam"]


def test_hooks_are_released_when_the_block_raises(cnn, vit):
    with pytest.raises(RuntimeError):
        with capture_outputs([cnn.model.layer1, cnn.model.layer2]):
            assert hook_counts(cnn)["forward"] == 2
            raise RuntimeError("boom")
    assert hook_counts(cnn) == NO_HOOKS
    with pytest.raises(RuntimeError):
        with attention_probs(vit):
            assert not vit.model.blocks[0].attn.fused_attn
            raise RuntimeError("boom")
    assert hook_counts(vit) == NO_HOOKS
    assert [b.attn.fused_attn for b in vit.model.blocks] == _fused_flags(vit)


@pytest.mark.slow  # ~3 s CPU on the loaded 2-core machine: too slow for make test-fast
def test_ensemble_map_is_the_normalised_mean_of_member_maps(model_factory):
    members = [model_factory("resnet18", 64, seed=s) for s in (1, 2)]
    ens = Ensemble(members, [m.contract for m in members], ensemble_contract(members[0].contract, 0.5, "ens"))
    x = _batch(2, 64, seed=3)
    singles = [compute_maps(m, x, "gradcam", 1) for m in members]
    assert not np.allclose(singles[0], singles[1])
    expected = normalise_maps(torch.from_numpy((singles[0] + singles[1]) / 2)).numpy()
    np.testing.assert_allclose(compute_maps(ens, x, "gradcam", 1), expected, atol=1e-5)
    assert hook_counts(ens) == NO_HOOKS


def test_ensemble_member_with_another_input_size_is_explained_at_its_own_size(model_factory):
    small, big = model_factory("resnet18", 64, seed=1), model_factory("resnet18", 96, seed=2)
    ens = Ensemble([small, big], [small.contract, big.contract], ensemble_contract(big.contract, 0.5, "ens"))
    maps = compute_maps(ens, _batch(1, 96), "eigencam", 1)
    _check_map(maps, 1, 96)


def test_log_odds_target_of_a_multilabel_finding_is_its_own_logit():
    """A sigmoid's log-odds is its logit: the other findings' logits must not enter (issue 19, bug a)."""
    logits = torch.tensor([[1.0, 3.0, 0.5]])
    assert LogOddsTarget(1, "multilabel")(logits).item() == pytest.approx(3.0)
    assert LogOddsTarget(1, "multiclass")(logits).item() == pytest.approx(3.0 - np.log(np.exp(1.0) + np.exp(0.5)))


def test_a_multilabel_map_explains_the_finding_s_logit_not_a_softmax_margin():
    """gradcam of a multilabel model for finding 1 equals grad-cam's map of the raw logit 1 (its sigmoid
    log-odds); the softmax margin gives another map."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from medclf.models import create_model

    torch.manual_seed(0)
    # 128 px: layer4 is 4 x 4, where the two targets' maps differ (at 2 x 2 both peak on one cell)
    model = create_model("resnet18", num_classes=3, input_size=128, label_names=["a", "b", "c"],
                         task="multilabel").eval()
    x = torch.rand(3, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    maps = compute_maps(model, x, "gradcam", 1)

    def grad_cam(target) -> np.ndarray:
        with GradCAM(model=model, target_layers=model.cam_target_layers()) as cam:
            return normalise_maps(torch.from_numpy(cam(input_tensor=x.clone(), targets=[target] * 3))).numpy()

    np.testing.assert_allclose(maps, grad_cam(ClassifierOutputTarget(1)), atol=1e-5)
    assert np.abs(grad_cam(LogOddsTarget(1, "multiclass")) - maps).max() > 0.1  # the softmax margin: another map
