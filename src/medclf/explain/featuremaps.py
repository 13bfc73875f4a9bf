"""Feature maps per stage (as in Zeiler & Fergus, ZFNet): what each block of the network responds to.

`stage_activations` records the output of every stage the model names (`model.feature_stages()`: ResNet
layer1..layer4, DenseNet dense blocks, EfficientNet MBConv stages, ViT blocks with their tokens reshaped to a
grid by `model.cam_reshape_transform`). `feature_grid` draws, for one image, the strongest channels of each
stage over the radiograph. As a method in the registry, `featuremaps` returns the activation map of the last
stage: the mean absolute activation over its channels (post-ReLU CNN stages are non-negative, so this is their
mean activation; ViT token features have both signs, hence the absolute value).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from medclf.explain.hooks import capture_outputs
from medclf.explain.overlay import render, tile
from medclf.explain.registry import normalise_maps, register_method, resize_maps


def stage_activations(model: nn.Module, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """[(stage name, B x C x h x w activation)] for every stage of `model.feature_stages()`, in forward order."""
    stages = model.feature_stages()
    with torch.no_grad(), capture_outputs([m for _, m in stages], model.cam_reshape_transform) as outputs:
        model(x)
        acts = list(outputs)
    return [(name, act) for (name, _), act in zip(stages, acts)]


def strongest_channels(activation: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the `k` channels of one `C x h x w` activation with the largest mean |activation|."""
    strength = activation.abs().mean(dim=(1, 2))
    return torch.topk(strength, min(k, strength.numel())).indices


@dataclass
class FeatureMapExplainer:
    name: str = "featuremaps"
    vit_only: bool = False

    def __call__(self, model: nn.Module, x: torch.Tensor, class_index: int) -> np.ndarray:
        # class-agnostic: what the last stage responds to, whatever the class
        _, last = stage_activations(model, x)[-1]
        maps = resize_maps(last.abs().mean(dim=1), tuple(x.shape[-2:]))
        return normalise_maps(maps).numpy()


def feature_grid(model: nn.Module, x: torch.Tensor, image: np.ndarray, top_k: int = 6,
                 min_side: int = 128) -> np.ndarray:
    """RGB grid for ONE image (`x`: 1 x C x H x W, `image`: its uint8 grey picture): a row per stage, the stage's
    `top_k` strongest channels as heat overlays, each captioned `<stage> #<channel>`."""
    rows = []
    for name, act in stage_activations(model, x[:1]):
        act = act[0]
        channels = strongest_channels(act, top_k)
        maps = normalise_maps(resize_maps(act[channels], image.shape[0])).numpy()
        rows.append([render(image, m, f"{name} #{int(c)}", min_side=min_side) for m, c in zip(maps, channels)])
    return tile(rows)


register_method("featuremaps", FeatureMapExplainer)
