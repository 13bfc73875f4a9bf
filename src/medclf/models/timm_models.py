"""Any timm model (`timm:<name>`) behind the `ClassifierModel` interface.

timm already separates `forward_features` / `forward_head` and describes its models (`pretrained_cfg`:
first conv, classifier, normalisation; `feature_info`: the stages), so this wrapper only reads those.
Fully supported: timm CNNs whose features are B x C x h x w maps, and the ViT family (ViT, DeiT, EVA, BEiT-style
models with `blocks[i].norm1` and prefix tokens). Other timm architectures train and predict; their CAM target
is the last `feature_info` stage.
"""

from __future__ import annotations

import difflib
from typing import Callable

import torch
from torch import nn

from medclf.errors import ConfigError, MedclfError
from medclf.models.wrappers import ClassifierModel, grid_transform


def _looks_like_vit(model: nn.Module) -> bool:
    blocks = getattr(model, "blocks", None)
    return (hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens") and blocks is not None
            and len(blocks) > 0 and hasattr(blocks[-1], "norm1"))


class TimmClassifier(ClassifierModel):
    def __init__(self, model: nn.Module, name: str) -> None:
        from timm.data import resolve_model_data_config

        data_cfg = resolve_model_data_config(model)
        super().__init__(model, name, list(data_cfg["mean"]), list(data_cfg["std"]))
        self.is_vit = _looks_like_vit(model)
        cfg = model.pretrained_cfg
        first = cfg.get("first_conv") or ""
        self.first_conv = first if isinstance(first, str) else first[0]
        heads = cfg.get("classifier") or ()
        heads = (heads,) if isinstance(heads, str) else tuple(heads)
        self.head_names = tuple(h for h in heads if _has_submodule(model, h))

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(int(g) for g in self.model.patch_embed.grid_size)  # type: ignore[return-value]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)

    def pre_logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(features, pre_logits=True)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(features)

    def cam_target_layers(self) -> list[nn.Module]:
        if self.is_vit:
            return [self.model.blocks[-1].norm1]  # see TorchvisionViT.cam_target_layers for why norm1
        return [self.feature_stages()[-1][1]]

    @property
    def cam_reshape_transform(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        if not self.is_vit:
            return None
        return grid_transform(self.grid_size, num_prefix=self.model.num_prefix_tokens)

    def feature_stages(self) -> list[tuple[str, nn.Module]]:
        if self.is_vit:
            return [(f"blocks.{i}", blk) for i, blk in enumerate(self.model.blocks)]
        names = [info["module"] for info in self.model.feature_info]
        return [(n, self.model.get_submodule(n)) for n in names]

    @property
    def num_features(self) -> int:
        return int(getattr(self.model, "head_hidden_size", None) or self.model.num_features)

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        pos = getattr(self.model, "pos_embed", None)
        if not self.is_vit or pos is None or "pos_embed" not in state or state["pos_embed"].shape == pos.shape:
            return state
        from timm.layers import resample_abs_pos_embed

        prefix = 0 if getattr(self.model, "no_embed_class", False) else self.model.num_prefix_tokens
        state = dict(state)
        state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], new_size=list(self.grid_size),
                                                    num_prefix_tokens=prefix)
        return state


def _has_submodule(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


def check_timm_name(timm_name: str) -> None:
    import timm

    if timm.is_model(timm_name):
        return
    close = difflib.get_close_matches(timm_name, timm.list_models(), n=5, cutoff=0.6)
    hint = f" (did you mean {', '.join('timm:' + c for c in close)}?)" if close else ""
    raise ConfigError(f"model.name: unknown timm model 'timm:{timm_name}'{hint}; see timm.list_models() "
                      f"for the {len(timm.list_models())} names timm knows")


def build_timm(timm_name: str, num_classes: int, input_size: int | None, drop_rate: float,
               pretrained_file: str | None) -> TimmClassifier:
    """timm.create_model with medclf's arguments; `pretrained_file` (already resolved and cached) is loaded by
    timm itself, which resamples ViT position embeddings to `img_size` and drops a mismatched classifier."""
    import timm

    check_timm_name(timm_name)
    kwargs: dict = {"num_classes": num_classes, "drop_rate": drop_rate}
    if pretrained_file is not None:
        # custom_load=False: the Hub files are plain state dicts even where the original release was .npz.
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": pretrained_file, "custom_load": False})
    try:
        model = _create(timm, timm_name, kwargs, input_size)
    except MedclfError:
        raise
    except (AssertionError, ValueError, RuntimeError, TypeError) as e:
        raise ConfigError(f"model.name: timm could not build '{timm_name}' (input_size={input_size}): {e}") from e
    wrapped = TimmClassifier(model, "timm:" + timm_name)
    if wrapped.is_vit and input_size is not None:
        patch = tuple(model.patch_embed.patch_size)
        if input_size % patch[0] or input_size % patch[1]:
            raise ConfigError(f"model.input_size: timm:{timm_name} needs a multiple of its patch size {patch[0]}, "
                              f"got {input_size}")
    return wrapped


def _create(timm, timm_name: str, kwargs: dict, input_size: int | None) -> nn.Module:
    if input_size is None:
        return timm.create_model(timm_name, **kwargs)
    try:
        # Fixed-size models (ViTs) take img_size and size their position embeddings to it.
        return timm.create_model(timm_name, img_size=input_size, **kwargs)
    except TypeError as e:
        # CNNs are size-agnostic and have no img_size argument; timm offers no way to ask beforehand.
        if "img_size" not in str(e):
            raise
        return timm.create_model(timm_name, **kwargs)


def timm_default_input_size(model: TimmClassifier) -> int:
    """The input size timm's pretrained config names (224 for most models; 384 for *_384 ViTs)."""
    size = model.model.pretrained_cfg.get("input_size") or (3, 224, 224)
    return int(size[-1])
