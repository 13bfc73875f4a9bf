"""Temperature scaling (Guo et al. 2017): divide the logits by one T > 0 fitted to minimise log-loss.

The log-likelihoods belong to the task (`softmax_nll`, `sigmoid_nll` in medclf.tasks.base, where activations live).
A single-label run (binary, multiclass) gets one T for its softmax; a multilabel run one T per label, each for
its own sigmoid (the Task chooses: `Task.fit_temperature`, `Task.tempered`). The logits are those of the
probabilities the run hands out (`Task.logits`: log p, or log-odds), so the same formula applies after an
ensemble's combination and the test-time flip. T is monotone: rankings, ROC AUC and the argmax never change;
only how confident the probabilities are.

Fitting is a bounded 1-D search over log T (scipy's `minimize_scalar`, bounded Brent); T = 1 is always a
candidate and is kept when the search does not beat it, so a fitted temperature can never raise the log-loss it
was fitted on. T = 1 is also kept when the fit cannot mean anything: fewer than `min_class` images of a class
(the same guard as the threshold rule), or a minimiser at the search bound, which happens when the calibration
images are (nearly) perfectly separated: log-loss then falls without end as T -> 0, and such a T would push
every probability of other images to 0 or 1.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.optimize import minimize_scalar

LOG_T_BOUNDS = (-3.0, 3.0)  # T in [0.05, 20]: wider than any reasonable network's miscalibration


def fit_one_temperature(nll: Callable[[float], float]) -> float:
    """The T in [0.05, 20] minimising `nll(T)`; 1.0 unless the search beats it inside the bounds."""
    found = minimize_scalar(lambda log_t: nll(float(np.exp(log_t))), bounds=LOG_T_BOUNDS, method="bounded")
    at_bound = min(abs(found.x - b) for b in LOG_T_BOUNDS) < 0.05
    t = float(np.exp(found.x))
    return t if nll(t) < nll(1.0) and not at_bound else 1.0


def enough_per_class(y: np.ndarray, k: int, min_class: int) -> bool:
    """Every one of the k classes of integer labels `y` has at least `min_class` images."""
    return bool(np.bincount(np.asarray(y, dtype=np.int64), minlength=k)[:k].min() >= max(1, min_class))
