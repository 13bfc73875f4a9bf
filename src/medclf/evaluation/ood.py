"""Out-of-distribution scores (a registry), the Mahalanobis detector and detection metrics: pure functions on
model outputs. The run layer produces those outputs (`medclf.runs.ood.model_outputs`: the Predictor's
probabilities, with its test-time flip and the task's activation) and applies a stored detector; nothing here
turns logits into probabilities.

Convention: every score is "higher = less like the training images".
- `msp`: minus the maximum class probability (Hendrycks & Gimpel 2017): the Predictor's probabilities, so a
  softmax for one label per image and a sigmoid per finding for multilabel;
- `energy`: minus logsumexp of the logits, i.e. the free energy at T = 1 (Liu et al. 2020); multilabel: minus the
  joint energy, the sum over findings of log(1 + e^logit) (Wang et al., NeurIPS 2021); a single model's raw
  logits averaged over the test-time views (an ensemble has none of its own);
- `mahalanobis`: the smallest squared Mahalanobis distance of the penultimate features (`model.embed`) to a
  class mean, with one covariance shared by the classes (Lee et al. 2018), fitted on the training split.

A fitted detector is a dict stored in the checkpoint's `contract.ood`: the score name (mahalanobis), the
threshold that accepts `accept_rate` (95%) of validation images, the class means and the precision matrix.
`medclf train` fits one on the training split when it ends; `medclf ood` measures and refits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from medclf.errors import MedclfError
from medclf.registry import Registry

DETECTOR_VERSION = 2  # 2: arrays as float32 tensors (1: nested lists)


@dataclass
class Outputs:
    """What the scores read: the Predictor's probabilities `N x K`, a single model's logits `N x K` (None for an
    ensemble) and penultimate features `N x D` (None for an ensemble)."""

    probs: np.ndarray
    logits: np.ndarray | None
    features: np.ndarray | None
    multilabel: bool = False  # the logits are read by a sigmoid each (medclf.tasks): the energy sums findings


# ----------------------------------------------------------------------------------------------- scores


ScoreFn = Callable[[Outputs, dict | None], np.ndarray]
OOD_SCORES: Registry[ScoreFn] = Registry("OOD score", order=("msp", "energy", "mahalanobis"))


@OOD_SCORES.register("msp")
def score_msp(out: Outputs, detector: dict | None = None) -> np.ndarray:
    return -np.asarray(out.probs, dtype=np.float64).max(axis=1)


@OOD_SCORES.register("energy")
def score_energy(out: Outputs, detector: dict | None = None) -> np.ndarray:
    if out.logits is None:
        raise MedclfError("energy score needs logits; an ensemble gives only combined probabilities")
    logits = torch.from_numpy(np.asarray(out.logits)).double()
    if out.multilabel:
        return -torch.nn.functional.softplus(logits).sum(dim=1).numpy()
    return -torch.logsumexp(logits, dim=1).numpy()


@OOD_SCORES.register("mahalanobis")
def score_mahalanobis(out: Outputs, detector: dict | None) -> np.ndarray:
    if out.features is None:
        raise MedclfError("mahalanobis score needs penultimate features; this model has no embed()")
    if detector is None or "means" not in detector:
        raise MedclfError("mahalanobis score needs a fitted detector (class means and precision)")
    return mahalanobis_scores(out.features, np.asarray(detector["means"]), np.asarray(detector["precision"]))


def get_score(name: str) -> ScoreFn:
    return OOD_SCORES.lookup(name)


# ----------------------------------------------------------------------------------------------- Mahalanobis


def fit_mahalanobis(features: np.ndarray, labels: np.ndarray, estimator: str = "ledoitwolf") -> dict:
    """Class means and the precision of the covariance shared by the classes (features centred per class).

    Ledoit-Wolf shrinkage by default: with 512-2048 feature dimensions and a few hundred images per class the
    empirical covariance is singular or badly conditioned.
    """
    from sklearn.covariance import EmpiricalCovariance, LedoitWolf

    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if len(features) < 2:
        raise MedclfError("mahalanobis: need at least 2 training images to fit a covariance")
    means = np.zeros((int(classes.max()) + 1, features.shape[1]))
    present = np.zeros(len(means), dtype=bool)
    for k in classes:
        means[k] = features[labels == k].mean(axis=0)
        present[k] = True
    centred = features - means[labels]
    est = {"ledoitwolf": LedoitWolf, "empirical": EmpiricalCovariance}.get(estimator)
    if est is None:
        raise MedclfError(f"mahalanobis: unknown estimator '{estimator}' (valid: ledoitwolf, empirical)")
    cov = est(assume_centered=True).fit(centred)
    # classes absent from training get no mean (distance +inf), instead of a spurious mean at the origin
    means[~present] = np.nan
    return {"means": means, "precision": cov.precision_, "estimator": estimator}


def mahalanobis_scores(features: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """min over classes of (f - mu_k)^T P (f - mu_k) for each row of `features`."""
    f = np.asarray(features, dtype=np.float64)
    best = np.full(len(f), np.inf)
    for mu in np.asarray(means, dtype=np.float64):
        if np.isnan(mu).any():
            continue
        d = f - mu
        best = np.minimum(best, np.einsum("nd,de,ne->n", d, precision, d))
    return best


# ----------------------------------------------------------------------------------------------- metrics


def detection_metrics(scores_in: np.ndarray, scores_out: np.ndarray) -> dict:
    """AUROC (OOD as the positive class) and FPR at 95% TPR: the share of OOD inputs still accepted when the
    threshold accepts 95% of in-distribution inputs (Hendrycks & Gimpel 2017; Liang et al. 2018)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    s_in, s_out = np.asarray(scores_in, float), np.asarray(scores_out, float)
    if len(s_in) == 0 or len(s_out) == 0:
        raise MedclfError("OOD metrics need both in-distribution and OOD images")
    y = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
    s = np.r_[s_in, s_out]
    s = np.nan_to_num(s, nan=np.inf, posinf=np.finfo(float).max)
    auroc = float(roc_auc_score(y, s))
    fpr, tpr, _ = roc_curve(1 - y, -s)  # in-distribution positive, accepted when the OOD score is low
    fpr95 = float(fpr[np.searchsorted(tpr, 0.95, side="left")])
    return {"auroc": auroc, "fpr95": fpr95, "n_in": int(len(s_in)), "n_out": int(len(s_out))}


# ----------------------------------------------------------------------------------------------- the detector


def make_detector(threshold: float, accept_rate: float, maha: dict, fitted_on: dict) -> dict:
    """The Mahalanobis detector stored as `contract.ood`: plain values plus float32 tensors (means `K x D`, NaN
    rows for classes absent from training; precision `D x D`), readable with `torch.load(weights_only=True)`."""
    return {"version": DETECTOR_VERSION, "score": "mahalanobis", "threshold": float(threshold),
            "accept_rate": float(accept_rate), "higher_is_ood": True, "fitted_on": fitted_on,
            "means": torch.as_tensor(np.asarray(maha["means"]), dtype=torch.float32),
            "precision": torch.as_tensor(np.asarray(maha["precision"]), dtype=torch.float32),
            "estimator": maha["estimator"]}


def detector_arrays(detector: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(means, precision) as float32 tensors, from a detector of this version (tensors) or of the first one
    (nested lists, None for an absent class)."""
    means = detector["means"]
    if not isinstance(means, torch.Tensor):
        means = [[math.nan if v is None else v for v in row] for row in means]
    return (torch.as_tensor(means, dtype=torch.float32),
            torch.as_tensor(detector["precision"], dtype=torch.float32))


def describe_detector(detector: dict | None) -> dict | None:
    """The detector without its arrays (for JSON: export metadata, the service's model info)."""
    if not detector:
        return None
    return {k: v for k, v in detector.items() if k not in ("means", "precision")}
