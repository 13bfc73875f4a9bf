"""Percentile bootstrap over images, vectorised across resamples.

Each resample draws n image indices with replacement. Rather than re-sorting scores per resample, every
image is mapped once to its distinct-score group; a resample is then just a vector of positive and
negative counts per group, from which the confusion counts (groups at or above the threshold), ROC AUC and
average precision follow with cumulative sums over all resamples at once (see metrics.py). Resamples are
processed in chunks so memory stays bounded (about 8 M indices per chunk).
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from medclf.errors import MedclfError
from medclf.evaluation.metrics import (
    CI_KEYS,
    average_precision_from_group_counts,
    check_binary_inputs,
    none_if_nan,
    point_metrics,
    rates_from_counts,
    roc_auc_from_group_counts,
)

_CHUNK_ELEMENTS = 8_000_000
PAIRED_METRICS = CI_KEYS  # any metric with an interval can be compared


def resample_indices(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Yield (b, n) arrays of indices drawn with replacement, n_boot rows in total, reproducibly."""
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, _CHUNK_ELEMENTS // max(n, 1)))
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        yield rng.integers(0, n, size=(b, n), dtype=np.int64 if n > 2**31 - 1 else np.int32)


def group_counts(y: np.ndarray, codes: np.ndarray, n_groups: int, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative counts per score group (columns) for each resample (rows of `idx`)."""
    b = idx.shape[0]
    flat = (np.arange(b, dtype=np.int64)[:, None] * n_groups + codes[idx]).ravel()
    total = np.bincount(flat, minlength=b * n_groups).reshape(b, n_groups)
    pos = np.bincount(flat, weights=y[idx].ravel(), minlength=b * n_groups).reshape(b, n_groups)
    return pos, total - pos


def metrics_from_group_counts(
    pos: np.ndarray, neg: np.ndarray, at_or_above: np.ndarray, keys: tuple[str, ...] = CI_KEYS
) -> dict[str, np.ndarray]:
    """The requested CI metrics per resample; `at_or_above` marks the score groups called positive."""
    out: dict[str, np.ndarray] = {}
    if any(k in keys for k in ("recall", "precision", "accuracy", "f1", "specificity")):
        called = at_or_above.astype(np.float64)
        tp, fp = pos @ called, neg @ called
        fn, tn = pos.sum(axis=1) - tp, neg.sum(axis=1) - fp
        out.update({k: v for k, v in rates_from_counts(tp, fp, tn, fn).items() if k in keys})
    if "roc_auc" in keys:
        out["roc_auc"] = roc_auc_from_group_counts(pos, neg)
    if "pr_auc" in keys:
        out["pr_auc"] = average_precision_from_group_counts(pos, neg)
    return out


class _Scored:
    """An array of probabilities mapped once to distinct-score groups (ascending)."""

    def __init__(self, prob: np.ndarray, threshold: float) -> None:
        scores, self.codes = np.unique(prob, return_inverse=True)
        self.n_groups = len(scores)
        self.at_or_above = scores >= threshold

    def resampled(self, y: np.ndarray, idx: np.ndarray, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
        pos, neg = group_counts(y, self.codes, self.n_groups, idx)
        return metrics_from_group_counts(pos, neg, self.at_or_above, keys)


def bootstrap_metrics(
    y: Any, prob: Any, threshold: float, n_boot: int = 1000, seed: int = 0, keys: tuple[str, ...] = CI_KEYS
) -> dict[str, np.ndarray]:
    """Bootstrap distribution (length n_boot, NaN where undefined in a resample) of each metric in `keys`."""
    y, prob = check_binary_inputs(y, prob)
    scored = _Scored(prob, threshold)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for idx in resample_indices(len(y), n_boot, seed):
        for k, v in scored.resampled(y, idx, keys).items():
            parts[k].append(v)
    return {k: np.concatenate(v) if v else np.empty(0) for k, v in parts.items()}


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> list[float] | None:
    """[lo, hi] percentile interval over the resamples where the metric is defined; None if there are none."""
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[~np.isnan(samples)]
    if samples.size == 0:
        return None
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(samples, [tail, 100.0 - tail])
    return [float(lo), float(hi)]


def paired_bootstrap(
    y: Any,
    prob_a: Any,
    prob_b: Any,
    metric: str = "roc_auc",
    threshold_a: float = 0.5,
    threshold_b: float = 0.5,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Compare two models' predictions on the same images: diff = metric(b) - metric(a).

    Both models are scored on the same resampled images in every resample. Returns ``metric``, ``a``, ``b``,
    ``diff``, ``ci`` (95% percentile interval of the diff) and a two-sided ``p_value`` =
    min(1, 2 (1 + #{diff* on the far side of 0}) / (1 + B)) over the B resamples where both are defined
    (the +1 keeps a finite number of resamples from claiming p = 0); ``n_valid`` counts those resamples.
    ``a``/``b`` are the point estimates on all images; undefined values are None.
    """
    if metric not in PAIRED_METRICS:
        raise MedclfError(f"unknown metric {metric!r} for a paired bootstrap; "
                          f"choose one of {', '.join(PAIRED_METRICS)}")
    if n_boot < 1:
        raise MedclfError(f"n_boot must be at least 1, got {n_boot}")
    y, prob_a = check_binary_inputs(y, prob_a)
    _, prob_b = check_binary_inputs(y, prob_b)
    keys = (metric,)
    scored_a, scored_b = _Scored(prob_a, threshold_a), _Scored(prob_b, threshold_b)
    diffs = []
    for idx in resample_indices(len(y), n_boot, seed):
        diffs.append(scored_b.resampled(y, idx, keys)[metric] - scored_a.resampled(y, idx, keys)[metric])
    diff_star = np.concatenate(diffs)
    diff_star = diff_star[~np.isnan(diff_star)]

    a = point_metrics(y, prob_a, float(threshold_a))[metric]
    b = point_metrics(y, prob_b, float(threshold_b))[metric]
    out: dict[str, Any] = {"metric": metric, "a": none_if_nan(a), "b": none_if_nan(b),
                           "diff": none_if_nan(b - a), "ci": percentile_interval(diff_star),
                           "p_value": None, "n_boot": int(n_boot), "n_valid": int(diff_star.size)}
    out["p_value"] = bootstrap_p_value(diff_star)
    return out


def bootstrap_p_value(diff_star: np.ndarray) -> float | None:
    """Two-sided p-value that a difference is 0, from its bootstrap resamples (NaN-free):
    min(1, 2 (1 + #{diff* on the far side of 0}) / (1 + B)); the +1 keeps a finite number of resamples from
    claiming p = 0. None when there are no resamples."""
    if diff_star.size == 0:
        return None
    far_side = min(int((diff_star <= 0).sum()), int((diff_star >= 0).sum()))
    return min(1.0, 2.0 * (1 + far_side) / (1 + diff_star.size))
