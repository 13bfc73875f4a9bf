"""Binary classification metrics at an operating threshold, as pure functions on arrays.

Conventions (see docs/evaluation.md):
- an image is called positive when ``prob >= threshold``;
- a metric that is undefined on the data (precision with no positive calls, AUC with one class, ...) is NaN
  inside the array functions and ``None`` in the returned dict / JSON, never NaN;
- the count-level formulas below are vectorised over a leading axis so the bootstrap can evaluate all
  resamples at once (``medclf.evaluation.bootstrap``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

from medclf.errors import MedclfError

# keys with a bootstrap interval under "ci", in the order they appear in metrics.json
RATE_KEYS = ("recall", "precision", "accuracy", "f1", "specificity")
CI_KEYS = RATE_KEYS + ("roc_auc", "pr_auc")
METRIC_KEYS = ("tp", "fp", "tn", "fn") + CI_KEYS + ("ece", "threshold", "n", "n_pos")


def check_binary_inputs(y_true: Any, prob: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert labels (0/1 or bool) and probabilities (finite, in [0, 1]) to 1-D arrays."""
    y = np.asarray(y_true)
    p = np.asarray(prob, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 1 or len(y) != len(p):
        raise MedclfError(f"labels and probabilities must be 1-D arrays of equal length, got {y.shape} and {p.shape}")
    if len(y) == 0:
        raise MedclfError("no predictions to evaluate (empty arrays)")
    if y.dtype != bool:
        bad = ~np.isin(y, (0, 1))
        if bad.any():
            raise MedclfError(f"binary labels must be 0/1, found {y[bad][0]!r}")
    if not np.isfinite(p).all() or p.min() < 0.0 or p.max() > 1.0:
        raise MedclfError("probabilities must be finite and within [0, 1]")
    return y.astype(np.int8), p


def column_counts(truth: np.ndarray, called: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(tp, fp, fn, tn) per column of N x K 0/1 truth and N x K boolean calls."""
    truth = np.asarray(truth).astype(bool)
    return ((truth & called).sum(axis=0), (~truth & called).sum(axis=0), (truth & ~called).sum(axis=0),
            (~truth & ~called).sum(axis=0))


def rates_from_counts(tp: Any, fp: Any, tn: Any, fn: Any) -> dict[str, np.ndarray]:
    """Recall, precision, accuracy, F1 and specificity from confusion counts (scalars or arrays).

    Undefined values are NaN: recall without positives, specificity without negatives, precision without
    positive calls, F1 (= 2TP / (2TP + FP + FN)) only when there are neither positives nor positive calls.
    """
    tp, fp, tn, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, tn, fn))
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "recall": _safe_div(tp, tp + fn),
            "precision": _safe_div(tp, tp + fp),
            "accuracy": _safe_div(tp + tn, tp + fp + tn + fn),
            "f1": _safe_div(2 * tp, 2 * tp + fp + fn),
            "specificity": _safe_div(tn, tn + fp),
        }


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def roc_auc_from_group_counts(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """ROC AUC per row from (weighted) counts of positives/negatives per distinct score, scores ascending.

    Mann-Whitney form with ties counted one half; equals sklearn's roc_auc_score with the counts as
    sample weights. Written by hand because sklearn handles one sample at a time, and the bootstrap
    needs 1000 resamples at once. NaN where a row lacks one class.
    """
    neg_below = np.cumsum(neg, axis=-1) - neg
    n_pos, n_neg = pos.sum(axis=-1), neg.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (pos * (neg_below + 0.5 * neg)).sum(axis=-1) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def average_precision_from_group_counts(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Average precision per row from counts per distinct score (ascending), as sklearn defines it:
    sum over thresholds of (recall step) x precision. Hand-written for the same reason as the AUC above.
    NaN where a row has no positives."""
    pos_desc, neg_desc = pos[..., ::-1], neg[..., ::-1]
    tp_cum = np.cumsum(pos_desc, axis=-1)
    called = tp_cum + np.cumsum(neg_desc, axis=-1)
    # a score absent from a resample has pos = 0 there, so its precision (0 here) never counts
    precision = np.divide(tp_cum, called, out=np.zeros_like(tp_cum, dtype=np.float64), where=called > 0)
    n_pos = pos.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ap = (pos_desc * precision).sum(axis=-1) / n_pos
    return np.where(n_pos > 0, ap, np.nan)


def point_metrics(y: np.ndarray, prob: np.ndarray, threshold: float) -> dict[str, float]:
    """Counts, rates and AUCs on the full data (floats, NaN where undefined); sklearn does the work."""
    pred = (prob >= threshold).astype(np.int8)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    out: dict[str, float] = {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
    out.update({k: float(v) for k, v in rates_from_counts(tp, fp, tn, fn).items()})
    n_pos = int(y.sum())
    both = 0 < n_pos < len(y)
    out["roc_auc"] = float(roc_auc_score(y, prob)) if both else math.nan
    out["pr_auc"] = float(average_precision_score(y, prob)) if n_pos > 0 else math.nan
    return out


def binary_metrics(
    y_true: Any, prob: Any, threshold: float, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """All metrics.json keys at `threshold`, with percentile-bootstrap 95% intervals under ``ci``.

    ``n_boot=0`` skips the bootstrap (every interval is None). Values are plain Python numbers or None.
    """
    # bootstrap builds on the count formulas in this module, hence the local import
    from medclf.evaluation.bootstrap import bootstrap_metrics, percentile_interval
    from medclf.evaluation.calibration import expected_calibration_error

    y, p = check_binary_inputs(y_true, prob)
    threshold = float(threshold)
    if not math.isfinite(threshold):
        raise MedclfError(f"threshold must be a finite number, got {threshold}")
    point = point_metrics(y, p, threshold)
    samples = bootstrap_metrics(y, p, threshold, n_boot=n_boot, seed=seed) if n_boot > 0 else {}
    out: dict[str, Any] = {k: int(point[k]) for k in ("tp", "fp", "tn", "fn")}
    out.update({k: none_if_nan(point[k]) for k in CI_KEYS})
    out["ece"] = float(expected_calibration_error(y, p))
    out.update(threshold=threshold, n=int(len(y)), n_pos=int(y.sum()))
    out["ci"] = {k: percentile_interval(samples[k]) if samples else None for k in CI_KEYS}
    return out


def none_if_nan(value: Any) -> float | None:
    """float(value), or None when it is NaN/None (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value
