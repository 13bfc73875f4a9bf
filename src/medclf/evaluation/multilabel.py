"""Metrics of a multi-label prediction (a sigmoid per label, any subset per image): per label, and averaged.

Each label is its own binary problem, called present at its own operating threshold (chosen on validation):
per label, `binary_metrics` gives the counts, rates, ROC/PR AUC and their bootstrap intervals. Averages, as
scikit-learn defines them for multi-label indicator targets: `macro` (each label alike), `weighted` (by the
label's prevalence in this split) and `micro` (every image-label pair pooled); the AUC averages are
`roc_auc_score(Y, P, average=...)` and the count-based ones come from the pooled (micro) or per-label (macro,
weighted) counts. The macro ROC AUC gets a bootstrap interval over images (`macro_auc_resamples`, as `compare`
resamples it). Labels absent from the split (or
present in every image) have no AUC: the AUC averages are then over the labels that have one, and say so in
`labels_without_auc`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from medclf.errors import MedclfError
from medclf.evaluation.bootstrap import percentile_interval
from medclf.evaluation.macro_auc import macro_auc_resamples
from medclf.evaluation.metrics import binary_metrics, column_counts, rates_from_counts
from medclf.labelsets import check_masks, multi_hot

AVERAGES = ("macro", "weighted", "micro")
RATE_KEYS = ("recall", "specificity", "precision", "f1")  # recall = sensitivity, as in binary_metrics


def multilabel_metrics(masks: Any, probs: Any, label_names: Sequence[str], thresholds: Sequence[float],
                       n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """`masks` (N bit masks, medclf.tasks) and `probs` N x K -> per-label metrics and their averages."""
    y, p = _masks_and_probs(masks, probs, label_names)
    t = np.asarray(thresholds, dtype=np.float64)
    per_label = {name: binary_metrics(y[:, k], p[:, k], float(t[k]), n_boot=n_boot, seed=seed)
                 for k, name in enumerate(label_names)}
    defined = [k for k in range(len(label_names)) if 0 < y[:, k].sum() < len(y)]
    out: dict[str, Any] = {"n": int(len(y)), "label_names": list(label_names), "thresholds": t.tolist(),
                           "per_label": per_label,
                           "labels_without_auc": [label_names[k] for k in range(len(label_names)) if k not in defined],
                           "exact_match": float(((p >= t) == y.astype(bool)).all(axis=1).mean())}
    called = p >= t
    for average in AVERAGES:
        out[average] = {**_auc_averages(y, p, defined, average), **average_rates(y, called, average)}
    resampled = macro_auc_resamples(y[:, defined], p[:, defined], n_boot, seed) if defined and n_boot > 0 else []
    out["ci"] = {"macro_roc_auc": percentile_interval(resampled)}
    return out


def _masks_and_probs(masks: Any, probs: Any, label_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(N x K 0/1 truth decoded from the bit masks, N x K probabilities), checked against the K labels."""
    p = np.asarray(probs, dtype=np.float64)
    k = len(label_names)
    masks = np.asarray(masks, dtype=np.int64).ravel()
    if p.ndim != 2 or p.shape != (len(masks), k):
        raise MedclfError(f"multilabel metrics need probabilities of shape (N, {k}), got {p.shape} for "
                          f"{len(masks)} labels")
    if len(masks) == 0:
        raise MedclfError(f"multilabel labels must be bit masks of {k} labels, got none")
    try:
        check_masks(masks, k)
    except ValueError as err:
        raise MedclfError(str(err)) from None
    return multi_hot(masks, k).astype(np.int8), p


def _auc_averages(y: np.ndarray, p: np.ndarray, defined: list[int], average: str) -> dict[str, float | None]:
    if not defined:
        return {"roc_auc": None, "pr_auc": None}
    yd, pd_ = (y, p) if average == "micro" else (y[:, defined], p[:, defined])
    return {"roc_auc": float(roc_auc_score(yd, pd_, average=average)),
            "pr_auc": float(average_precision_score(yd, pd_, average=average))}


def average_rates(y: np.ndarray, called: np.ndarray, average: str) -> dict[str, float | None]:
    """Sensitivity (`recall`), specificity, precision and F1 of N x K calls, averaged `macro`, `weighted` or
    `micro`; a label where a rate is undefined is left out of its average."""
    truth = y.astype(bool)
    tp, fp, fn, tn = column_counts(truth, called)
    if average == "micro":
        tp, fp, fn, tn = (np.array([c.sum()]) for c in (tp, fp, fn, tn))
    rates = rates_from_counts(tp, fp, tn, fn)
    weights = truth.sum(axis=0) if average == "weighted" else np.ones(len(tp))
    out = {}
    for key in RATE_KEYS:
        values = np.asarray(rates[key], dtype=np.float64)
        ok = np.isfinite(values) & (weights > 0)
        out[key] = float(np.average(values[ok], weights=weights[ok])) if ok.any() else None
    return out
