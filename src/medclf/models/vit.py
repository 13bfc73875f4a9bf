"""torchvision Vision Transformers behind the `ClassifierModel` interface, at any input size.

torchvision builds a ViT for one `image_size`; weights trained at another size are made to fit by bicubic
interpolation of the position embeddings over the patch grid, the class token's embedding kept as is
(torchvision's own `interpolate_embeddings`, as its docs recommend for fine-tuning at another resolution).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from medclf.errors import ConfigError
from medclf.models.cnn import imagenet_norm
from medclf.models.wrappers import ClassifierModel, grid_transform


class TorchvisionViT(ClassifierModel):
    is_vit = True
    first_conv = "conv_proj"
    head_names = ("heads",)

    def __init__(self, model: nn.Module, name: str, drop_rate: float) -> None:
        super().__init__(model, name, *imagenet_norm(name))
        self.head_drop = nn.Dropout(drop_rate)

    @property
    def grid_size(self) -> tuple[int, int]:
        g = self.model.image_size // self.model.patch_size
        return g, g

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        tokens = m._process_input(x)  # B x N x D patch tokens (checks the input size)
        cls = m.class_token.expand(tokens.shape[0], -1, -1)
        return m.encoder(torch.cat([cls, tokens], dim=1))  # + position embedding, blocks, final LayerNorm

    def pre_logits(self, features: torch.Tensor) -> torch.Tensor:
        return features[:, 0]

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.heads(self.head_drop(self.pre_logits(features)))

    def cam_target_layers(self) -> list[nn.Module]:
        # The last block's first LayerNorm: its output still carries every patch token (the pytorch-grad-cam
        # recipe for ViTs); the final LayerNorm only feeds the class token to the head, so its patch-token
        # gradients are zero.
        return [self.model.encoder.layers[-1].ln_1]

    @property
    def cam_reshape_transform(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return grid_transform(self.grid_size, num_prefix=1)

    def feature_stages(self) -> list[tuple[str, nn.Module]]:
        return [(f"encoder.layers.{i}", blk) for i, blk in enumerate(self.model.encoder.layers)]

    @property
    def num_features(self) -> int:
        return int(self.model.hidden_dim)

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from torchvision.models.vision_transformer import interpolate_embeddings

        key = "encoder.pos_embedding"
        ours = self.model.encoder.pos_embedding
        if key in state and state[key].shape != ours.shape:
            state = interpolate_embeddings(self.model.image_size, self.model.patch_size, dict(state))
        return state


def build_torchvision_vit(name: str, num_classes: int, input_size: int, drop_rate: float) -> ClassifierModel:
    import torchvision.models as tvm

    patch = int(name.rsplit("_", 1)[-1])  # vit_b_16 -> 16
    if input_size % patch:
        raise ConfigError(f"model.input_size: {name} needs a multiple of its patch size {patch}, got {input_size}")
    model = tvm.get_model(name, weights=None, num_classes=num_classes, image_size=input_size)
    return TorchvisionViT(model, name, drop_rate)
