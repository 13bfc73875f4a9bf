"""Optimizer parameter groups: no weight decay where it hurts, optional layer-wise learning-rate decay.

Layer-wise decay follows BEiT/MAE fine-tuning: with L = number of stages + 1, the stem (patch embedding,
class token, position embedding; a CNN's first conv) is layer 0, stage i (ViT block i, CNN stage i) is layer
i + 1 (1-based stages: layer i), and whatever follows the last stage (final norm, head) is layer L; layer l
trains at lr * layer_decay ** (L - l). Written here rather than taken from timm because timm's
`param_groups_layer_decay` needs timm's `group_matcher` (torchvision models have none) and hands out
`lr_scale` for timm's own schedulers, where torch schedulers need the scaled `lr` itself.
"""

from __future__ import annotations

from torch import nn

from medclf.errors import ConfigError

# Embeddings and tokens are vectors the network looks up, not weights to shrink (ViT/BEiT/MAE practice).
NO_DECAY_NAMES = ("pos_embed", "pos_embedding", "cls_token", "class_token", "dist_token", "reg_token")


def _unwrap(model: nn.Module) -> nn.Module:
    for _ in range(4):
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module) or hasattr(model, "feature_stages"):
            break
        model = inner
    return model


def _no_weight_decay(name: str, ndim: int, extra: set[str]) -> bool:
    # Biases and norm scales/shifts are 1-d; decaying them only fights the normalisation.
    return ndim <= 1 or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES or name in extra


def layer_ids(model: nn.Module) -> tuple[dict[str, int], int]:
    """Each parameter name's layer (0 = stem ... L = after the last stage) and L."""
    stages = [m for _, m in model.feature_stages() if any(True for _ in m.parameters())]
    stage_of = {id(p): i + 1 for i, stage in enumerate(stages) for p in stage.parameters()}
    top = len(stages) + 1
    named = list(model.named_parameters())
    last_in_stage = max((i for i, (_, p) in enumerate(named) if id(p) in stage_of), default=-1)
    ids, current = {}, 0
    for i, (name, p) in enumerate(named):  # registration order is forward order for these networks
        if id(p) in stage_of:
            current = stage_of[id(p)]
        ids[name] = top if i > last_in_stage else current  # between stages: the stage before
    return ids, top


def param_groups(model: nn.Module, lr: float, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
    """Parameter groups for a torch optimizer, each with its own `lr` and `weight_decay` (+ `param_names`).

    No weight decay on biases, norm parameters, position embeddings and class/register tokens. With
    `layer_decay` the learning rate shrinks by that factor per layer below the head (see module doc).
    """
    model = _unwrap(model)
    if layer_decay is not None:
        if not 0.0 < layer_decay <= 1.0:
            raise ConfigError(f"train.layer_decay must be in (0, 1], got {layer_decay}")
        if not hasattr(model, "feature_stages"):
            raise ConfigError(f"train.layer_decay needs a medclf model with stages, got {type(model).__name__}")
        ids, top = layer_ids(model)
    else:
        ids, top = {}, 0
    extra = set()
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "no_weight_decay"):  # timm's own list, relative to the timm model
        extra = {f"model.{n}" for n in inner.no_weight_decay()}
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = ids.get(name, top)
        no_decay = _no_weight_decay(name, p.ndim, extra)
        key = (layer, no_decay)
        if key not in groups:
            scale = layer_decay ** (top - layer) if layer_decay is not None else 1.0
            groups[key] = {"params": [], "param_names": [], "lr": lr * scale,
                           "weight_decay": 0.0 if no_decay else weight_decay}
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(name)
    return [groups[k] for k in sorted(groups)]
