"""Metrics of a K-class (softmax, one label per image) prediction: per class one-vs-rest, and their averages.

A pure function of arrays; scikit-learn computes every figure, so the numbers are scikit-learn's by
construction (tests/evaluation/test_eval_multiclass.py checks it). The class called for an image is the most
probable one (argmax). Per class k, "positive" means "of class k": sensitivity is the share of class-k images
called k, specificity the share of the others not called k. Averages: `macro` (each class alike), `weighted`
(by prevalence in this split) and `micro` (every image-class pair pooled). The confusion matrix has the true
class in rows and the called class in columns (scikit-learn's convention). Intervals are percentile bootstrap
intervals over images, as for the binary metrics.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)
from sklearn.preprocessing import label_binarize

from medclf.errors import MedclfError
from medclf.evaluation.bootstrap import percentile_interval, resample_indices

PER_CLASS_KEYS = ("roc_auc", "pr_auc", "sensitivity", "specificity", "precision", "f1")
AVERAGES = ("macro", "weighted", "micro")
SUMMARY_CI_KEYS = ("accuracy", "balanced_accuracy", "cohen_kappa", "macro_roc_auc")


def multiclass_metrics(y_true: Any, probs: Any, label_names: Sequence[str], n_boot: int = 1000,
                       seed: int = 0) -> dict[str, Any]:
    """Per-class metrics, macro/weighted/micro averages, accuracy, balanced accuracy, Cohen's kappa and the K x K
    confusion matrix, with bootstrap 95% intervals under ``ci`` (per class under ``per_class[name]["ci"]``)."""
    y, p = _check(y_true, probs, label_names)
    out = _point(y, p, label_names)
    samples = _bootstrap(y, p, label_names, n_boot, seed)
    out["ci"] = {key: percentile_interval(samples[key]) for key in SUMMARY_CI_KEYS}
    for name in label_names:
        out["per_class"][name]["ci"] = {key: percentile_interval(samples[f"{name}/{key}"])
                                        for key in PER_CLASS_KEYS}
    return out


def _check(y_true: Any, probs: Any, label_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    y, p = np.asarray(y_true, dtype=np.int64).ravel(), np.asarray(probs, dtype=np.float64)
    k = len(label_names)
    if p.ndim != 2 or p.shape != (len(y), k):
        raise MedclfError(f"multiclass metrics need probabilities of shape (N, {k}), got {p.shape} for {len(y)} labels")
    if len(y) == 0 or y.min() < 0 or y.max() >= k:
        raise MedclfError(f"multiclass labels must be class indices 0..{k - 1}")
    return y, p


def _point(y: np.ndarray, p: np.ndarray, label_names: Sequence[str]) -> dict[str, Any]:
    k, called = len(label_names), p.argmax(axis=1)
    labels = list(range(k))
    per_class = {name: {**_one_vs_rest(y == i, p[:, i], called == i), "n_pos": int((y == i).sum())}
                 for i, name in enumerate(label_names)}
    out: dict[str, Any] = {"n": int(len(y)), "label_names": list(label_names), "per_class": per_class,
                           "accuracy": float((called == y).mean()),
                           "balanced_accuracy": float(balanced_accuracy_score(y, called)),
                           "cohen_kappa": _defined(lambda: cohen_kappa_score(y, called, labels=labels)),
                           "confusion": confusion_matrix(y, called, labels=labels).tolist()}
    onehot = label_binarize(y, classes=labels)
    for average in AVERAGES:
        precision, recall, f1, _ = precision_recall_fscore_support(y, called, labels=labels, average=average,
                                                                   zero_division=0)
        out[average] = {"roc_auc": _auc(y, onehot, p, average), "pr_auc": _pr_auc(onehot, p, average),
                        "sensitivity": float(recall), "precision": float(precision), "f1": float(f1)}
    return out


def _one_vs_rest(is_class: np.ndarray, prob: np.ndarray, called: np.ndarray) -> dict[str, float | None]:
    tp, fp = int((is_class & called).sum()), int((~is_class & called).sum())
    fn, tn = int((is_class & ~called).sum()), int((~is_class & ~called).sum())
    both = 0 < is_class.sum() < len(is_class)
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
    return {"roc_auc": float(roc_auc_score(is_class, prob)) if both else None,
            "pr_auc": float(average_precision_score(is_class, prob)) if both else None,
            "sensitivity": recall, "specificity": tn / (tn + fp) if tn + fp else None,
            "precision": precision, "f1": f1}


def _auc(y: np.ndarray, onehot: np.ndarray, p: np.ndarray, average: str) -> float | None:
    if len(np.unique(y)) < p.shape[1]:  # a class absent from the split: its one-vs-rest AUC is undefined
        return None
    if average == "micro":
        return float(roc_auc_score(onehot, p, average="micro"))
    return float(roc_auc_score(y, p, multi_class="ovr", average=average))


def _pr_auc(onehot: np.ndarray, p: np.ndarray, average: str) -> float | None:
    if onehot.sum(axis=0).min() == 0:
        return None
    return float(average_precision_score(onehot, p, average=average))


def _defined(fn) -> float | None:
    value = float(fn())
    return value if np.isfinite(value) else None


def _bootstrap(y: np.ndarray, p: np.ndarray, label_names: Sequence[str], n_boot: int,
               seed: int) -> dict[str, np.ndarray]:
    """Each interval's resampled values (NaN where a resample leaves the figure undefined). The counts-based
    figures come from one K x K confusion matrix per resample (numpy, the same formulas as scikit-learn's) and
    only the AUCs call scikit-learn, so 1000 resamples stay cheap."""
    keys = [*SUMMARY_CI_KEYS, *(f"{name}/{key}" for name in label_names for key in PER_CLASS_KEYS)]
    samples: dict[str, list[float]] = {key: [] for key in keys}
    called = p.argmax(axis=1)
    for chunk in resample_indices(len(y), n_boot, seed) if n_boot > 0 else ():
        for idx in chunk:
            values = _resample_values(y[idx], p[idx], called[idx], label_names)
            for key in keys:
                samples[key].append(values[key])
    return {key: np.asarray(v, dtype=np.float64) for key, v in samples.items()}


def _resample_values(y: np.ndarray, p: np.ndarray, called: np.ndarray,
                     label_names: Sequence[str]) -> dict[str, float]:
    k, n = len(label_names), len(y)
    cm = np.bincount(y * k + called, minlength=k * k).reshape(k, k).astype(np.float64)
    tp, true_n, called_n = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    fp, fn = called_n - tp, true_n - tp
    tn = n - tp - fp - fn
    with np.errstate(divide="ignore", invalid="ignore"):
        recall, specificity = tp / true_n, tn / (tn + fp)
        precision, f1 = tp / called_n, 2 * tp / (2 * tp + fp + fn)
        chance = float((true_n * called_n).sum()) / n**2
        kappa = (tp.sum() / n - chance) / (1.0 - chance)
    aucs = np.array([_binary_auc(y == i, p[:, i], roc_auc_score) for i in range(k)])
    values = {"accuracy": tp.sum() / n, "balanced_accuracy": np.nanmean(recall) if (true_n > 0).any() else np.nan,
              "cohen_kappa": kappa, "macro_roc_auc": aucs.mean()}  # NaN unless every class is present
    for i, name in enumerate(label_names):
        values.update({f"{name}/roc_auc": aucs[i], f"{name}/sensitivity": recall[i],
                       f"{name}/pr_auc": _binary_auc(y == i, p[:, i], average_precision_score),
                       f"{name}/specificity": specificity[i], f"{name}/precision": precision[i], f"{name}/f1": f1[i]})
    return {key: float(v) for key, v in values.items()}


def _binary_auc(is_class: np.ndarray, prob: np.ndarray, score) -> float:
    return float(score(is_class, prob)) if 0 < is_class.sum() < len(is_class) else np.nan
