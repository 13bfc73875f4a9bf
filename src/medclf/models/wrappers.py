"""`ClassifierModel`: one interface over torchvision and timm classifiers (DESIGN habit 3).

A wrapper holds the library's own module as `self.model`, so `model.model.state_dict()` has exactly the
library's keys (torchvision/timm weight files load into it unchanged) and the wrapper's keys are `model.<key>`.
Subclasses say where the features end, where the head is, and which layers CAMs and feature maps use, so
callers never need layer names.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import nn

from medclf.contract import DataContract
from medclf.errors import ConfigError


class ClassifierModel(nn.Module):
    """A classifier with separate features and head.

    Subclasses implement `forward_features`, `pre_logits`, `forward_head`, `cam_target_layers` and
    `feature_stages`, and set `first_conv` / `head_names` (dotted names inside `self.model`).
    """

    is_vit: bool = False
    first_conv: str = ""  # the input conv / patch embedding inside self.model, adapted for in_chans=1
    head_names: tuple[str, ...] = ()  # classifier modules inside self.model (dropped when shapes differ)

    def __init__(self, model: nn.Module, name: str, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.model = model
        self.model_name = name
        # Normalisation of the pretrained weights for 3 channels; create_model derives the contract from it.
        self.pretrained_mean = [float(v) for v in mean]
        self.pretrained_std = [float(v) for v in std]
        self.contract: DataContract | None = None
        self.build_kwargs: dict = {}  # create_model's arguments, stored in checkpoints to rebuild the model

    # --- the interface -------------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """CNN: B x C x h x w feature map; ViT: B x T x D tokens including the prefix (class) tokens."""
        raise NotImplementedError

    def pre_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features, B x D (global average pool for CNNs, class token for ViTs)."""
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits, B x K, from `forward_features`' output."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """B x D pooled penultimate features (for OOD scores and contrastive learning)."""
        return self.pre_logits(self.forward_features(x))

    def cam_target_layers(self) -> list[nn.Module]:
        raise NotImplementedError

    @property
    def cam_reshape_transform(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """None for CNNs; for ViTs a function B x T x D tokens -> B x D x h x w (prefix tokens dropped)."""
        return None

    def feature_stages(self) -> list[tuple[str, nn.Module]]:
        """The network's stages in forward order (ResNet: layer1..layer4; ViT: the transformer blocks,
        whose outputs are B x T x D tokens, turned into maps by `cam_reshape_transform`)."""
        raise NotImplementedError

    @property
    def num_features(self) -> int:
        """D, the width of `embed`."""
        raise NotImplementedError

    # --- weight plumbing used by weights.py ------------------------------------------------------------------
    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Make a library state dict fit this model where it can (ViTs resample position embeddings)."""
        return state

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for n in self.head_names for p in self.model.get_submodule(n).parameters()]

    def input_channels(self) -> int:
        return int(self.model.get_submodule(self.first_conv).in_channels)

    def adapt_in_chans(self, in_chans: int) -> None:
        """Turn the 3-channel input layer into a 1-channel one by summing its filters over the channels.

        A grey image replicated to 3 channels then gives exactly the output the 1-channel layer gives on the
        single channel (conv is linear in its input), so pretrained filters keep their meaning.
        """
        if not self.first_conv:
            raise ConfigError(f"model.in_chans: {self.model_name} does not name its first layer; use in_chans=3")
        conv = self.model.get_submodule(self.first_conv)
        if in_chans == conv.in_channels:
            return
        if in_chans != 1 or conv.in_channels != 3:
            raise ConfigError(f"model.in_chans: only 3 -> 1 channel adaptation is supported, got "
                              f"{conv.in_channels} -> {in_chans}")
        with torch.no_grad():
            summed = conv.weight.sum(dim=1, keepdim=True)
        # Changing the parameter in place keeps the conv's class (timm's Conv2dSame and friends).
        conv.weight = nn.Parameter(summed)
        conv.in_channels = 1


def tokens_to_grid(tokens: torch.Tensor, grid: tuple[int, int], num_prefix: int) -> torch.Tensor:
    """B x T x D tokens -> B x D x h x w, dropping the first `num_prefix` (class/register) tokens."""
    h, w = grid
    patches = tokens[:, num_prefix:, :]
    if patches.shape[1] != h * w:
        raise ValueError(f"expected {h}x{w}={h * w} patch tokens after {num_prefix} prefix tokens, "
                         f"got {patches.shape[1]} (input size differs from the model's input_size?)")
    return patches.reshape(tokens.shape[0], h, w, tokens.shape[2]).permute(0, 3, 1, 2).contiguous()


def grid_transform(grid: tuple[int, int], num_prefix: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A picklable `cam_reshape_transform` for a fixed patch grid."""
    return functools.partial(tokens_to_grid, grid=(int(grid[0]), int(grid[1])), num_prefix=int(num_prefix))
