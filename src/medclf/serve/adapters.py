"""The optional part of a prediction, behind one small function so the service keeps answering when it is
missing: the Grad-CAM map (`medclf.explain`). It returns the maps or a one-line reason why there are none; the API
passes the reason on as `heatmap_reason`. (The out-of-distribution score comes with the Predictor's outputs.)
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from medclf.runs import Run, model_input

log = logging.getLogger("medclf.serve")
HEATMAP_METHOD = "gradcam"


def heatmap_maps(run: Run, images: np.ndarray, device: torch.device,
                 targets: np.ndarray | None = None) -> tuple[np.ndarray | None, str | None]:
    """Grad-CAM maps `B x S x S` in [0, 1] for the positive class of uint8 `B x S x S` images (or for each
    image's class in `targets`), or (None, reason).

    Works for ensembles too (`compute_maps` averages the members' maps). Called on the predictor's single
    model thread: Grad-CAM registers hooks on the shared model and needs gradients.
    """
    try:
        from medclf.explain.registry import compute_class_maps
    except ImportError as err:
        return None, f"explanations unavailable: medclf.explain cannot be imported ({err})"
    try:
        x = model_input(run.contract, torch.from_numpy(images).to(device))
        if targets is None:
            targets = np.full(len(images), run.contract.positive_index)
        maps = compute_class_maps(run.model, x, HEATMAP_METHOD, targets)
    except Exception as err:  # an explanation failure must not cost the prediction itself
        log.warning("heatmap failed: %s", type(err).__name__)
        return None, f"{HEATMAP_METHOD} failed: {type(err).__name__}: {_first_line(err)}"
    return np.asarray(maps, dtype=np.float32), None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else ""
