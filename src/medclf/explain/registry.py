"""Explanation methods by name (DESIGN habit 1, after grad-cam's `methods` dict) and the one entry point,
`compute_maps`, that turns a batch into maps for a single model or an ensemble.

An explainer is a callable `(model, x, class_index) -> B x H x W float32 maps in [0, 1]` at the input's size,
built from a `ClassifierModel`'s own description of itself (`cam_target_layers`, `cam_reshape_transform`,
`feature_stages`), so no user ever names a layer.
"""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medclf.errors import MedclfError
from medclf.models.ensemble import is_ensemble, members_of
from medclf.registry import Registry


class Explainer(Protocol):
    name: str
    vit_only: bool

    def __call__(self, model: nn.Module, x: torch.Tensor, class_index: int) -> np.ndarray: ...


def _load_builtin() -> None:
    """Import the built-in method modules; each registers its names."""
    from medclf.explain import cams, featuremaps, rollout  # noqa: F401


BUILTIN_ORDER = ("gradcam", "gradcam++", "scorecam", "eigencam", "featuremaps", "rollout")
METHODS: Registry[Callable[[], Explainer]] = Registry("explanation method", order=BUILTIN_ORDER, load=_load_builtin)


def register_method(name: str, factory: Callable[[], Explainer]) -> None:
    """Add (or replace) a method; `factory()` returns an Explainer."""
    METHODS.register(name, factory)


def list_methods(model: nn.Module | None = None) -> list[str]:
    """Method names in registration order; with `model`, only those that apply to it (rollout needs a ViT)."""
    names = METHODS.names()
    if model is None:
        return names
    return [n for n in names if _applies(METHODS.lookup(n)(), model)]


def create_explainer(name: str) -> Explainer:
    """The explainer registered as `name`; an unknown name lists the valid ones."""
    return METHODS.lookup(name)()


def parse_methods(text: str | None, model: nn.Module) -> list[str]:
    """'gradcam,gradcam++' -> checked names; None or '' -> every method that applies to `model`."""
    if not text:
        return list_methods(model)
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        check_applies(create_explainer(name), model)
    return list(dict.fromkeys(names))


def is_vit(model: nn.Module) -> bool:
    return all(bool(getattr(m, "is_vit", False)) for m in members_of(model))


def _applies(explainer: Explainer, model: nn.Module) -> bool:
    return not explainer.vit_only or is_vit(model)


def check_applies(explainer: Explainer, model: nn.Module) -> None:
    if not _applies(explainer, model):
        name = getattr(model, "model_name", type(model).__name__)
        raise MedclfError(f"method '{explainer.name}' needs a Vision Transformer and {name} is not one; "
                          f"valid for this model: {', '.join(list_methods(model))}")


def compute_maps(model: nn.Module, x: torch.Tensor, method: str | Explainer, class_index: int) -> np.ndarray:
    """Maps `B x H x W` in [0, 1] at `x`'s size for the class `class_index`.

    An ensemble's map is the mean of its members' maps (each member explained at its own input size and
    brought back to `x`'s size), rescaled to [0, 1]: a region counts as much as the members agree on it.
    """
    explainer = create_explainer(method) if isinstance(method, str) else method
    check_applies(explainer, model)
    size = tuple(x.shape[-2:])
    maps = []
    for i, member in enumerate(members_of(model)):
        member.eval()
        xm = member_input(model, i, x)
        try:
            m = torch.from_numpy(np.asarray(explainer(member, xm, class_index), dtype=np.float32))
        finally:
            member.zero_grad(set_to_none=True)  # gradient methods leave .grad on every parameter
        maps.append(resize_maps(m, size))
    mean = torch.stack(maps).mean(0) if len(maps) > 1 else maps[0]
    return normalise_maps(mean).numpy()


def compute_class_maps(model: nn.Module, x: torch.Tensor, method: str | Explainer,
                       targets: np.ndarray) -> np.ndarray:
    """`compute_maps` with a class per image (`targets`, B ints): CAM methods explain one class per call, so one
    call per distinct class."""
    targets = np.asarray(targets, dtype=np.int64)
    maps = np.empty((len(targets), *x.shape[-2:]), dtype=np.float32)
    for k in np.unique(targets):
        rows = np.flatnonzero(targets == k)
        maps[rows] = compute_maps(model, x[torch.from_numpy(rows).to(x.device)], method, int(k))
    return maps


def member_input(model: nn.Module, i: int, x: torch.Tensor) -> torch.Tensor:
    """The input member `i` of an ensemble sees for the ensemble's input `x` (itself for a single model)."""
    if not is_ensemble(model):
        return x
    # the Ensemble re-expresses x in each member's own contract (size, channels, mean/std), as the graph runs it
    adapt: Callable[[int, torch.Tensor], torch.Tensor] = getattr(model, "member_input")  # noqa: B009 (typed for mypy)
    return adapt(i, x)


def resize_maps(maps: torch.Tensor | np.ndarray, size: tuple[int, int] | int) -> torch.Tensor:
    """Bilinear resize of `B x h x w` maps to `size` (values stay within the input's range)."""
    maps = torch.as_tensor(maps, dtype=torch.float32)
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(maps.shape[-2:]) == size:
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """Per-map min-max to [0, 1]; a flat map (nothing stands out) becomes all zeros, as grad-cam does."""
    flat = maps.reshape(maps.shape[0], -1)
    lo = flat.min(dim=1).values.view(-1, 1, 1)
    span = (flat.max(dim=1).values.view(-1, 1, 1) - lo)
    out = (maps - lo) / span.clamp_min(1e-12)
    return torch.where(span > 1e-12, out, torch.zeros_like(maps)).clamp_(0.0, 1.0)
