"""Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers") for ViTs.

Written by hand because none of the libraries we use has it: grad-cam (`pytorch_grad_cam`) offers CAMs only,
captum has no rollout, and timm/torchvision do not expose attention probabilities. Rollout needs those
probabilities from every block, so we hook them:

- timm `Attention` (ViT, DeiT, ...): the fused kernel (`F.scaled_dot_product_attention`) never materialises
  the probabilities, so `fused_attn` is switched off for the duration and the softmax output is read where it
  enters `attn_drop`; the flag is restored afterwards.
- torchvision `EncoderBlock`: it calls `nn.MultiheadAttention(..., need_weights=False)`; a forward pre-hook
  asks for the per-head weights and a forward hook reads them (the block discards them itself).

Rollout: per block, fuse the heads (mean by default), add the identity for the residual path, renormalise
rows, and multiply the blocks' matrices in order; the class token's row over the patch tokens is the map.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import nn

from medclf.errors import MedclfError
from medclf.explain.hooks import released
from medclf.explain.registry import normalise_maps, register_method, resize_maps


@contextlib.contextmanager
def attention_probs(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Yield a list that receives each block's attention probabilities (B x heads x T x T) on a forward pass."""
    inner = getattr(model, "model", model)
    probs: list[torch.Tensor] = []
    handles: list = []
    if hasattr(inner, "blocks"):
        attns = [blk.attn for blk in inner.blocks]
        if not all(hasattr(a, "fused_attn") and hasattr(a, "attn_drop") for a in attns):
            raise MedclfError(f"rollout: {getattr(model, 'model_name', '?')} has no timm Attention blocks "
                              f"whose probabilities can be read; use gradcam instead")
        saved = [a.fused_attn for a in attns]
        for a in attns:
            a.fused_attn = False
            handles.append(a.attn_drop.register_forward_hook(lambda _m, _i, out: probs.append(out.detach())))
        try:
            with released(handles):
                yield probs
        finally:
            for a, flag in zip(attns, saved):
                a.fused_attn = flag
    elif hasattr(inner, "encoder") and hasattr(inner.encoder, "layers"):
        for layer in inner.encoder.layers:
            mha = layer.self_attention
            handles.append(mha.register_forward_pre_hook(_ask_for_weights, with_kwargs=True))
            handles.append(mha.register_forward_hook(lambda _m, _i, out: probs.append(out[1].detach())))
        with released(handles):
            yield probs
    else:
        raise MedclfError(f"rollout: {getattr(model, 'model_name', '?')} is not a timm or torchvision ViT")


def _ask_for_weights(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    return args, {**kwargs, "need_weights": True, "average_attn_weights": False}


def rollout(attentions: list[torch.Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0) -> torch.Tensor:
    """B x T x T joint attention from per-block B x heads x T x T probabilities.

    `discard_ratio` > 0 zeroes that fraction of the weakest links per block (the class token's own column
    kept), a common sharpening; 0 is the paper's rollout.
    """
    if not attentions:
        raise MedclfError("rollout: no attention probabilities were recorded")
    joint = None
    for attn in attentions:
        fused = {"mean": attn.mean(1), "max": attn.amax(1), "min": attn.amin(1)}[head_fusion]
        if discard_ratio > 0:
            fused = _discard_weakest(fused, discard_ratio)
        eye = torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
        a = (fused + eye) / 2
        a = a / a.sum(dim=-1, keepdim=True)
        joint = a if joint is None else a @ joint
    return joint


def _discard_weakest(fused: torch.Tensor, ratio: float) -> torch.Tensor:
    flat = fused.reshape(fused.shape[0], -1)
    k = int(flat.shape[1] * ratio)
    if not k:
        return fused
    keep = flat > flat.kthvalue(k, dim=1, keepdim=True).values
    keep[:, 0] = True  # the class token's attention to itself
    return (flat * keep).view_as(fused)


@dataclass
class RolloutExplainer:
    name: str = "rollout"
    vit_only: bool = True
    head_fusion: str = "mean"
    discard_ratio: float = 0.0

    def __call__(self, model: nn.Module, x: torch.Tensor, class_index: int) -> np.ndarray:
        # class-agnostic: rollout follows attention, not the class score
        with torch.no_grad(), attention_probs(model) as probs:
            model(x)
            joint = rollout(list(probs), self.head_fusion, self.discard_ratio)
        gh, gw = model.grid_size
        n_prefix = joint.shape[-1] - gh * gw
        cls_row = joint[:, 0, n_prefix:].reshape(-1, gh, gw)
        return normalise_maps(resize_maps(cls_row, tuple(x.shape[-2:]))).numpy()


register_method("rollout", RolloutExplainer)
