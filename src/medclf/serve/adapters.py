"""The two optional parts of a prediction, each behind one small function so the service keeps answering
when either is missing: the Grad-CAM map (`medclf.explain`) and the out-of-distribution score
(`medclf.robust.ood`). Each returns its value or a one-line reason why there is none; the API passes the
reason on as `heatmap_reason` / `ood_reason`.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from medclf.data.transforms import make_transform
from medclf.runs import LoadedRun

log = logging.getLogger("medclf.serve")
HEATMAP_METHOD = "gradcam"


def heatmap_maps(run: LoadedRun, images: np.ndarray, device: torch.device) -> tuple[np.ndarray | None, str | None]:
    """Grad-CAM maps `B x S x S` in [0, 1] for the positive class of uint8 `B x S x S` images, or (None, reason).

    Works for ensembles too (`compute_maps` averages the members' maps). Called on the predictor's single
    model thread: Grad-CAM registers hooks on the shared model and needs gradients.
    """
    try:
        from medclf.explain.registry import compute_maps
    except ImportError as err:
        return None, f"explanations unavailable: medclf.explain cannot be imported ({err})"
    try:
        x = make_transform(run.contract, train=False)(torch.from_numpy(images).to(device))
        maps = compute_maps(run.model, x, HEATMAP_METHOD, run.contract.positive_index)
    except Exception as err:  # an explanation failure must not cost the prediction itself
        log.warning("heatmap failed: %s", type(err).__name__)
        return None, f"{HEATMAP_METHOD} failed: {type(err).__name__}: {_first_line(err)}"
    return np.asarray(maps, dtype=np.float32), None


def ood_scores(run: LoadedRun, images: np.ndarray) -> tuple[list[dict] | None, str | None]:
    """Per image `{"score": float, "flag": bool}` when the checkpoint was fitted with an OOD detector."""
    if not run.contract.ood:
        return None, "this checkpoint has no out-of-distribution detector (contract.ood is not set)"
    try:
        from medclf.robust.ood import ood_flags
    except ImportError as err:
        return None, f"out-of-distribution check unavailable: medclf.robust.ood cannot be imported ({err})"
    try:
        scores, flags = ood_flags(run, images)
    except Exception as err:  # as for heatmaps: report, keep serving
        log.warning("ood check failed: %s", type(err).__name__)
        return None, f"out-of-distribution check failed: {type(err).__name__}: {_first_line(err)}"
    return [{"score": float(s), "flag": bool(f)} for s, f in zip(np.asarray(scores), np.asarray(flags))], None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else ""
