"""Choosing the operating threshold on validation predictions (then applied unchanged to test).

Candidate thresholds are the distinct predicted probabilities; an image is called positive when
``prob >= threshold``. Ties between equally good thresholds go to the highest one (fewest positive calls).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from medclf.errors import MedclfError
from medclf.evaluation.metrics import check_binary_inputs

THRESHOLD_METHODS = ("f1", "youden", "sensitivity")


def choose_threshold(y_true: Any, prob: Any, method: str = "f1", target: float | None = None) -> float:
    """Threshold that maximises F1 (``f1``), Youden's J = sensitivity + specificity - 1 (``youden``), or the
    highest threshold whose sensitivity reaches `target` (``sensitivity``)."""
    if method not in THRESHOLD_METHODS:
        raise MedclfError(f"unknown threshold method {method!r}; choose one of {', '.join(THRESHOLD_METHODS)}")
    y, p = check_binary_inputs(y_true, prob)
    if y.min() == y.max():
        raise MedclfError("choosing a threshold needs both classes in the labels, found only one")
    if method == "f1":
        return _f1_threshold(y, p)
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    # thresholds come highest first; the first is +inf (nothing called positive) and is never returned
    fpr, tpr, thr = fpr[1:], tpr[1:], thr[1:]
    if method == "youden":
        return float(thr[_first_best(tpr - fpr)])
    if target is None or not 0.0 < float(target) <= 1.0:
        raise MedclfError(f"method 'sensitivity' needs a target in (0, 1], got {target!r}")
    # tpr rises as the threshold falls, so the first reaching the target is the highest such threshold
    return float(thr[int(np.argmax(tpr >= float(target) - 1e-12))])


def _f1_threshold(y: np.ndarray, p: np.ndarray) -> float:
    precision, recall, thr = precision_recall_curve(y, p)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    # thresholds ascend here: reverse so the first best is the highest threshold among ties
    return float(thr[::-1][_first_best(f1[::-1])])


def _first_best(values: np.ndarray) -> int:
    """Index of the first maximum, treating values within rounding error (1e-12) of it as ties."""
    return int(np.flatnonzero(values >= values.max() - 1e-12)[0])
