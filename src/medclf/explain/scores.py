"""Scores of maps against the RSNA boxes, and faithfulness (pure functions on arrays, DESIGN habit 5).

- Pointing game (Zhang et al. 2016): a hit when the map's maximum lies inside a box (`peak`: a plateau of
  maxima counts at its centre); a flat map (nothing stands out) is a miss, counted as `flat`.
- Energy in box: the share of the map's total mass inside the union of the boxes (a flat zero map scores 0).
  A map that ignores the image scores the boxes' area fraction, reported as the chance level for both.
- Faithfulness: ROAD (Rong et al. 2022) from grad-cam (`pytorch_grad_cam.metrics.road.ROADCombined`): pixels
  are removed by noisy linear imputation in order of the map, most relevant first (MoRF) and least relevant
  first (LeRF), at 10..90 %; the score is mean(LeRF change - MoRF change) / 2 of the class probability.
  Higher is more faithful: removing what the map points at should hurt more than removing what it ignores.
  The probability is the run's own (`medclf.runs.Probabilities`: the Predictor's graph with its test-time
  flip, ensemble combination and the task's activation); pixels are imputed in the unit-range image, before
  normalisation, as attacks perturb it.

Boxes are `[x, y, w, h]` in the map's pixels. A pixel belongs to a box when its centre lies inside it.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import torch

from medclf.evaluation.bootstrap import resample_indices

Box = Sequence[float]


def box_mask(boxes: Sequence[Box], shape: tuple[int, int]) -> np.ndarray:
    """Boolean `H x W` mask of the union of `boxes` (pixel centres inside a box)."""
    h, w = shape
    mask = np.zeros((h, w), dtype=bool)
    for x, y, bw, bh in boxes:
        # pixel j's centre j + 0.5 lies in [x, x + bw)  <=>  ceil(x - 0.5) <= j < ceil(x + bw - 0.5)
        c0, c1 = max(0, math.ceil(x - 0.5)), min(w, math.ceil(x + bw - 0.5))
        r0, r1 = max(0, math.ceil(y - 0.5)), min(h, math.ceil(y + bh - 0.5))
        if c1 > c0 and r1 > r0:
            mask[r0:r1, c0:c1] = True
    return mask


def is_flat(heat: np.ndarray) -> bool:
    return bool(np.ptp(heat) <= 1e-12)


def peak(heat: np.ndarray) -> tuple[int, int]:
    """(row, col) of the map's maximum. When the maximum is a plateau (a coarse map upsampled, e.g. 2x2 CAM
    cells at 64 px, is flat around each cell centre up to the border), the maximal pixel nearest the
    plateau's centroid, not its first pixel in row-major order, which would be the image's corner."""
    top = np.argwhere(heat >= heat.max() - 1e-6)
    if len(top) == 1:
        return int(top[0, 0]), int(top[0, 1])
    nearest = np.argmin(((top - top.mean(axis=0)) ** 2).sum(axis=1))
    return int(top[nearest, 0]), int(top[nearest, 1])


def pointing_hit(heat: np.ndarray, boxes: Sequence[Box]) -> bool:
    """True when the map's maximum (`peak`) falls in a box; a flat map is a miss."""
    if is_flat(heat):
        return False
    row, col = peak(heat)
    return bool(box_mask(boxes, heat.shape)[row, col])


def energy_in_box(heat: np.ndarray, boxes: Sequence[Box]) -> float:
    """Sum of the map inside the boxes / sum of the whole map (0 for an all-zero map)."""
    heat = np.clip(np.asarray(heat, dtype=np.float64), 0.0, None)
    total = heat.sum()
    if total <= 0:
        return 0.0
    return float(heat[box_mask(boxes, heat.shape)].sum() / total)


def box_area_fraction(boxes: Sequence[Box], shape: tuple[int, int]) -> float:
    """Chance level of both scores: the share of the image the boxes cover."""
    return float(box_mask(boxes, shape).mean())


def mean_ci(values: Sequence[float], n_boot: int = 1000, seed: int = 0) -> dict:
    """Mean with a 95 % percentile bootstrap interval over images: `{"mean", "ci": [lo, hi], "n"}`."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": None, "ci": [None, None], "n": 0}
    means = np.concatenate([v[idx].mean(axis=1) for idx in resample_indices(v.size, n_boot, seed)])
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": float(v.mean()), "ci": [float(lo), float(hi)], "n": int(v.size)}


def road_scores(probabilities: torch.nn.Module, x_unit: torch.Tensor, maps: np.ndarray, class_index: int,
                percentiles: Sequence[int] = (10, 20, 30, 40, 50, 60, 70, 80, 90)) -> np.ndarray:
    """ROAD combined score per image. `probabilities`: unit-range `B x 1 x H x W` -> class probabilities `B x K`
    (read as they are: no activation is applied here); `x_unit`: the batch; `maps`: `B x H x W` at its size.

    Equal to grad-cam's `ROADCombined` (mean over percentiles of (LeRF change - MoRF change) / 2): the
    unperturbed probability cancels out of that difference, so it is not computed, which halves the forward
    passes (`ROADCombined` recomputes it for every percentile and order).
    """
    try:
        from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError as err:
        from medclf.errors import MedclfError

        raise MedclfError("ROAD needs the grad-cam package: pip install grad-cam") from err
    targets = [ClassifierOutputTarget(class_index) for _ in range(x_unit.shape[0])]
    cams = np.asarray(maps, dtype=np.float32)
    after = {}
    # grad-cam hands tensors to numpy functions, which NumPy 2 answers with a DeprecationWarning per call
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for order, metric in (("lerf", ROADLeastRelevantFirst), ("morf", ROADMostRelevantFirst)):
            after[order] = np.mean([metric(p)(x_unit, cams, targets, probabilities, return_diff=False)
                                    for p in percentiles], 0)
    return ((after["lerf"] - after["morf"]) / 2).astype(np.float64).reshape(-1)
