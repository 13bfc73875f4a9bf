"""Macro ROC AUC of K-class or K-label probabilities, and a paired bootstrap of its difference between two models.

Macro AUC is the unweighted mean over classes (labels) of the one-vs-rest AUC: for a softmax (multiclass) model
it equals scikit-learn's ``roc_auc_score(y, p, multi_class="ovr", average="macro")``; for a sigmoid (multilabel)
model it is the mean of the per-label AUCs. It is undefined (None / NaN) when a class has no positive or no
negative image, as scikit-learn refuses it then.

The paired test resamples images exactly as the binary `paired_bootstrap` does (same indices for both models in
every resample, same seed stream, same p-value) and scores each class with the same vectorised group-count AUC,
so binary and K-class comparisons read alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from medclf.errors import MedclfError
from medclf.evaluation.bootstrap import _Scored, bootstrap_p_value, percentile_interval, resample_indices
from medclf.evaluation.metrics import none_if_nan


def truth_matrix(truth: Any, k: int) -> np.ndarray:
    """N x K 0/1 truth from class indices (length N) or an N x K 0/1 matrix (multilabel), checked."""
    t = np.asarray(truth)
    if t.ndim == 1:
        t = t.astype(np.int64)
        if t.size and (t.min() < 0 or t.max() >= k):
            raise MedclfError(f"class indices must be in 0..{k - 1}")
        return (t[:, None] == np.arange(k)[None, :]).astype(np.int8)
    if t.ndim != 2 or t.shape[1] != k or not np.isin(t, (0, 1)).all():
        raise MedclfError(f"truth must be N class indices or an N x {k} 0/1 matrix, got shape {t.shape}")
    return t.astype(np.int8)


def _checked(truth: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2 or len(p) == 0:
        raise MedclfError(f"probabilities must be N x K with K >= 2 and N > 0, got shape {p.shape}")
    if not np.isfinite(p).all() or p.min() < 0.0 or p.max() > 1.0:
        raise MedclfError("probabilities must be finite and within [0, 1]")
    t = truth_matrix(truth, p.shape[1])
    if len(t) != len(p):
        raise MedclfError(f"{len(t)} truths for {len(p)} rows of probabilities")
    return t, p


def macro_roc_auc(truth: Any, probs: Any, skip_undefined: bool = False) -> float | None:
    """Mean over the K columns of the one-vs-rest ROC AUC; None when a column lacks positives or negatives (with
    `skip_undefined`, the mean over the columns that have both: training's validation AUC of a multilabel run)."""
    t, p = _checked(truth, probs)
    counts = t.sum(axis=0)
    defined = (counts > 0) & (counts < len(t))
    if not defined.all() and not (skip_undefined and defined.any()):
        return None
    return float(np.mean([roc_auc_score(t[:, k], p[:, k]) for k in np.flatnonzero(defined)]))


def paired_macro_auc(truth: Any, probs_a: Any, probs_b: Any, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """diff = macro AUC(b) - macro AUC(a) on the same images, with the keys of `paired_bootstrap`:
    ``metric`` ("macro_roc_auc"), ``a``, ``b``, ``diff``, ``ci`` (95% percentile interval of the diff over the
    resamples where every class has both outcomes), ``p_value`` (two-sided), ``n_boot``, ``n_valid``."""
    if n_boot < 1:
        raise MedclfError(f"n_boot must be at least 1, got {n_boot}")
    t, pa = _checked(truth, probs_a)
    _, pb = _checked(truth, probs_b)
    if pa.shape != pb.shape:
        raise MedclfError(f"the two models' probabilities differ in shape: {pa.shape} vs {pb.shape}")
    # the same seed draws the same resamples for both models: the difference is paired
    diff_star = macro_auc_resamples(t, pb, n_boot, seed) - macro_auc_resamples(t, pa, n_boot, seed)
    diff_star = diff_star[~np.isnan(diff_star)]
    a, b = macro_roc_auc(t, pa), macro_roc_auc(t, pb)
    return {"metric": "macro_roc_auc", "a": a, "b": b, "diff": None if a is None or b is None else none_if_nan(b - a),
            "ci": percentile_interval(diff_star), "p_value": bootstrap_p_value(diff_star), "n_boot": int(n_boot),
            "n_valid": int(diff_star.size)}


def macro_auc_resamples(t: np.ndarray, p: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """The macro AUC of each of `n_boot` bootstrap resamples of the images (`resample_indices(len(t), n_boot,
    seed)`), N x K 0/1 truth `t` and probabilities `p`; NaN where a column lacks one outcome in a resample."""
    scored = [_Scored(p[:, k], 0.5) for k in range(p.shape[1])]  # the threshold plays no part in the AUC
    parts = [np.mean([s.resampled(t[:, k], idx, ("roc_auc",))["roc_auc"] for k, s in enumerate(scored)], axis=0)
             for idx in resample_indices(len(t), n_boot, seed)]
    return np.concatenate(parts) if parts else np.empty(0)
