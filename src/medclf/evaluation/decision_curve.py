"""Decision curves (Vickers & Elkin 2006): the net benefit of acting on the model over threshold probabilities.

At a threshold probability p_t (the risk at which a clinician would act), calling positive every image with
prob >= p_t has net benefit NB = TP/n - FP/n * p_t / (1 - p_t): true positives found, minus false positives
weighted by the odds at which harm and benefit balance. "Treat all" calls every image positive
(NB = prevalence - (1 - prevalence) * p_t / (1 - p_t)); "treat none" has NB = 0. A model is worth using at p_t
only where its curve lies above both. Hand-written: a few lines of counting, and no maintained Python library
offers it (dcurves follows pandas' DataFrame API with a model column per call; not worth the dependency).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from medclf.errors import MedclfError
from medclf.evaluation.metrics import check_binary_inputs

DEFAULT_THRESHOLDS = np.round(np.arange(0.01, 1.0, 0.01), 2)
COLUMNS = ("label", "threshold", "net_benefit", "treat_all", "treat_none", "tp", "fp", "n")


def net_benefit(y: Any, prob: Any, thresholds: Any) -> dict[str, np.ndarray]:
    """Per threshold p_t in (0, 1): `net_benefit` of the model, `treat_all`, and the `tp`, `fp` counts."""
    y, prob = check_binary_inputs(y, prob)
    pt = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if pt.size == 0 or pt.min() <= 0.0 or pt.max() >= 1.0:
        raise MedclfError("decision-curve thresholds must lie strictly between 0 and 1")
    n = len(y)
    called = prob[None, :] >= pt[:, None]  # T x n
    tp = (called & (y[None, :] == 1)).sum(axis=1)
    fp = (called & (y[None, :] == 0)).sum(axis=1)
    odds = pt / (1.0 - pt)
    prevalence = y.mean()
    return {"threshold": pt, "net_benefit": tp / n - fp / n * odds,
            "treat_all": prevalence - (1.0 - prevalence) * odds, "tp": tp, "fp": fp}


def decision_curve_table(truth: Any, probs: Any, label_names: Sequence[str],
                         thresholds: Any = DEFAULT_THRESHOLDS) -> pd.DataFrame:
    """Long table, one row per (label, threshold): the model's net benefit, treat-all, treat-none (0), TP, FP, n.

    `truth` is an N x L 0/1 matrix and `probs` N x L: one column per curve (binary: the positive class alone;
    multiclass: each class against the rest; multilabel: each label).
    """
    truth, probs = np.atleast_2d(np.asarray(truth)), np.atleast_2d(np.asarray(probs, dtype=np.float64))
    if truth.shape != probs.shape or truth.shape[1] != len(label_names):
        raise MedclfError(f"decision curve: truth {truth.shape}, probabilities {probs.shape} and "
                          f"{len(label_names)} label names do not match")
    parts = []
    for k, name in enumerate(label_names):
        nb = net_benefit(truth[:, k], probs[:, k], thresholds)
        parts.append(pd.DataFrame({"label": name, **nb, "treat_none": 0.0, "n": len(truth)}))
    return pd.concat(parts, ignore_index=True)[list(COLUMNS)]
