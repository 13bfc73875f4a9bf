"""Temperature scaling (Guo et al. 2017): divide the logits by one T > 0 fitted to minimise log-loss.

A single-label run (binary, multiclass) gets one T for its softmax; a multilabel run one T per label, each for
its own sigmoid. The logits are those of the probabilities the run hands out (`logits_of`: log p, or log-odds),
so the same formula applies after an ensemble's combination and the test-time flip. T is monotone: rankings,
ROC AUC and the argmax never change; only how confident the probabilities are.

Fitting is a bounded 1-D search over log T (scipy's `minimize_scalar`, Brent); T = 1 is always a candidate and
is kept when the search does not beat it, so a fitted temperature can never raise the log-loss it was fitted on.
T = 1 is also kept when the fit cannot mean anything: fewer than `min_class` images of a class (per label for
multilabel, the same guard as the threshold rule), or a minimiser at the search bound, which happens when the
calibration images are (nearly) perfectly separated: log-loss then falls without end as T -> 0, and such a T
would push every probability of other images to 0 or 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_softmax

from medclf.errors import MedclfError

_TINY = 1e-12
LOG_T_BOUNDS = (-3.0, 3.0)  # T in [0.05, 20]: wider than any reasonable network's miscalibration


# --- task-specific part (integrator: move into the Task object) ---------------------------------------------------
def logits_from_probs(probs: np.ndarray, task: str) -> np.ndarray:
    """N x K logits whose activation gives `probs` (log p for softmax tasks, log-odds for multilabel)."""
    probs = np.asarray(probs, dtype=np.float64)
    if task == "multilabel":
        p = np.clip(probs, _TINY, 1.0 - 1e-7)
        return np.log(p) - np.log1p(-p)
    return np.log(np.clip(probs, _TINY, None))


def apply_temperature(probs: Any, temperature: Any, task: str) -> np.ndarray:
    """`probs` as they would be with the logits divided by `temperature` (a scalar, or K for multilabel)."""
    z = logits_from_probs(probs, task) / np.asarray(temperature, dtype=np.float64)
    return expit(z) if task == "multilabel" else np.exp(log_softmax(z, axis=1))
# -------------------------------------------------------------------------------------------------------------------


def softmax_nll(logits: np.ndarray, y: np.ndarray, t: float) -> float:
    """Mean negative log-likelihood of class indices `y` under softmax(logits / t)."""
    return float(-log_softmax(logits / t, axis=1)[np.arange(len(y)), y].mean())


def sigmoid_nll(logit: np.ndarray, y: np.ndarray, t: float) -> float:
    """Mean binary cross-entropy of 0/1 `y` under sigmoid(logit / t), computed stably."""
    z = logit / t
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_one_temperature(nll) -> float:
    """The T in [0.05, 20] minimising `nll(T)`; 1.0 unless the search beats it inside the bounds."""
    found = minimize_scalar(lambda log_t: nll(float(np.exp(log_t))), bounds=LOG_T_BOUNDS, method="bounded")
    at_bound = min(abs(found.x - b) for b in LOG_T_BOUNDS) < 0.05
    t = float(np.exp(found.x))
    return t if nll(t) < nll(1.0) and not at_bound else 1.0


def fit_temperature(probs: Any, truth: Any, task: str, min_class: int = 1) -> list[float]:
    """Temperatures for a run's probabilities: [T] for binary/multiclass (`truth` = class indices),
    one per label for multilabel (`truth` = N x K 0/1 matrix); 1.0 where a class (a label's presence or absence)
    has fewer than `min_class` images."""
    probs = np.asarray(probs, dtype=np.float64)
    truth = np.asarray(truth)
    if probs.ndim != 2 or len(probs) == 0 or len(truth) != len(probs):
        raise MedclfError(f"temperature: need N x K probabilities and N truths, got {probs.shape} and {truth.shape}")
    z = logits_from_probs(probs, task)
    if task == "multilabel":
        return [fit_one_temperature(lambda t, k=k: sigmoid_nll(z[:, k], truth[:, k], t))
                if _enough(truth[:, k].astype(np.int64), 2, min_class) else 1.0 for k in range(z.shape[1])]
    y = truth.astype(np.int64)
    return [fit_one_temperature(lambda t: softmax_nll(z, y, t)) if _enough(y, z.shape[1], min_class) else 1.0]


def _enough(y: np.ndarray, k: int, min_class: int) -> bool:
    """Every one of the k classes has at least `min_class` images."""
    return bool(np.bincount(y, minlength=k)[:k].min() >= max(1, min_class))


def log_loss(probs: Any, truth: Any, task: str) -> float:
    """Mean log-loss of probabilities against the truth (multilabel: averaged over images and labels)."""
    z = logits_from_probs(probs, task)
    truth = np.asarray(truth)
    if task == "multilabel":
        return float(np.mean([sigmoid_nll(z[:, k], truth[:, k], 1.0) for k in range(z.shape[1])]))
    return softmax_nll(z, truth.astype(np.int64), 1.0)
