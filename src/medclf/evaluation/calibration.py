"""Calibration of the positive-class probability: reliability-diagram data and expected calibration error.

Bins are equal-width over [0, 1]: bin k holds probabilities in [k/B, (k+1)/B), the last bin also holds 1.0.
ECE = sum over bins of (n_bin / n) * |fraction positive in bin - mean probability in bin|; empty bins add 0.
We bin the positive-class probability (not the top-label confidence) because that is the number the
operating threshold acts on. Hand-written rather than sklearn's `calibration_curve`, which drops empty bins
and does not return the counts that ECE and the histogram need.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medclf.errors import MedclfError
from medclf.evaluation.metrics import check_binary_inputs


def _bin_index(prob: np.ndarray, n_bins: int) -> np.ndarray:
    if n_bins < 1:
        raise MedclfError(f"n_bins must be at least 1, got {n_bins}")
    return np.minimum((prob * n_bins).astype(np.int64), n_bins - 1)


def reliability_curve(y: Any, prob: Any, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per bin: ``lower``, ``upper`` edges, ``count``, ``mean_prob`` and ``frac_pos`` (NaN for empty bins)."""
    y, prob = check_binary_inputs(y, prob)
    idx = _bin_index(prob, n_bins)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    prob_sum = np.bincount(idx, weights=prob, minlength=n_bins)
    pos_sum = np.bincount(idx, weights=y.astype(np.float64), minlength=n_bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_prob = np.where(count > 0, prob_sum / count, np.nan)
        frac_pos = np.where(count > 0, pos_sum / count, np.nan)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return {"lower": edges[:-1], "upper": edges[1:], "count": count.astype(np.int64),
            "mean_prob": mean_prob, "frac_pos": frac_pos}


def expected_calibration_error(y: Any, prob: Any, n_bins: int = 15) -> float:
    """ECE with `n_bins` equal-width bins (see module docstring); 0 is perfectly calibrated."""
    curve = reliability_curve(y, prob, n_bins)
    filled = curve["count"] > 0
    weights = curve["count"][filled] / curve["count"].sum()
    gaps = np.abs(curve["frac_pos"][filled] - curve["mean_prob"][filled])
    return float((weights * gaps).sum())


def brier_score(y: Any, prob: Any) -> float:
    """Mean squared difference between the positive-class probability and the 0/1 truth (0 is perfect)."""
    y, prob = check_binary_inputs(y, prob)
    return float(np.mean((prob - y) ** 2))


def calibration_with_ci(y: Any, prob: Any, n_boot: int = 1000, seed: int = 0, n_bins: int = 15,
                        level: float = 0.95) -> dict[str, Any]:
    """ECE and Brier score on all images, each with a percentile bootstrap interval over images (`ci`).

    Every resample is scored at once: with bin sums per resample, ECE_b = sum_k |pos_k - prob_k| / n
    (the n_k/n weight cancels the per-bin means), so no loop over resamples is needed.
    """
    from medclf.evaluation.bootstrap import percentile_interval, resample_indices

    y, prob = check_binary_inputs(y, prob)
    idx_bin = _bin_index(prob, n_bins)
    sq_err = (prob - y) ** 2
    ece_b, brier_b = [], []
    for idx in resample_indices(len(y), n_boot, seed):
        b, n = idx.shape
        flat = (np.arange(b, dtype=np.int64)[:, None] * n_bins + idx_bin[idx]).ravel()
        prob_sum = np.bincount(flat, weights=prob[idx].ravel(), minlength=b * n_bins).reshape(b, n_bins)
        pos_sum = np.bincount(flat, weights=y[idx].ravel().astype(np.float64), minlength=b * n_bins)
        ece_b.append(np.abs(pos_sum.reshape(b, n_bins) - prob_sum).sum(axis=1) / n)
        brier_b.append(sq_err[idx].mean(axis=1))
    out: dict[str, Any] = {"ece": expected_calibration_error(y, prob, n_bins), "brier": brier_score(y, prob),
                           "n_bins": int(n_bins), "ci": {"ece": None, "brier": None}}
    if ece_b:
        out["ci"] = {"ece": percentile_interval(np.concatenate(ece_b), level),
                     "brier": percentile_interval(np.concatenate(brier_b), level)}
    return out
