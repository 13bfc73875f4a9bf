"""Out-of-distribution scores (a registry), the Mahalanobis detector, detection metrics and `ood_flags`.

Convention: every score is "higher = less like the training images".
- `msp`: minus the maximum softmax probability (Hendrycks & Gimpel 2017);
- `energy`: minus logsumexp of the logits, i.e. the free energy at T = 1 (Liu et al. 2020);
- `mahalanobis`: the smallest squared Mahalanobis distance of the penultimate features (`model.embed`) to a
  class mean, with one covariance shared by the classes (Lee et al. 2018), fitted on the training split.

A fitted detector is a plain dict stored in the checkpoint's `contract.ood`: the score name, the threshold
that accepts `accept_rate` (95%) of validation images, and for Mahalanobis the class means and precision
matrix as nested lists (JSON-safe, readable with `torch.load(weights_only=True)`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from medclf.errors import MedclfError

DETECTOR_VERSION = 1


@dataclass
class Outputs:
    """What the scores read: logits `N x K` (log-probabilities for ensembles) and features `N x D` (or None)."""

    logits: np.ndarray
    features: np.ndarray | None


# ----------------------------------------------------------------------------------------------- the model side


def _classifier(model: nn.Module) -> nn.Module | None:
    from medclf.models.wrappers import ClassifierModel

    return model if isinstance(model, ClassifierModel) else None


@torch.no_grad()
def model_outputs(model: nn.Module, contract, batches: Iterable[torch.Tensor], device: torch.device) -> Outputs:
    """Logits and pooled penultimate features for uint8 `B x S x S` batches, in one forward pass per batch."""
    from medclf.data.transforms import make_transform

    transform = make_transform(contract, train=False)
    model.eval()
    clf = _classifier(model)
    logits, feats = [], []
    for images in batches:
        x = transform(images.to(device))
        if clf is not None:
            features = clf.forward_features(x)
            emb = clf.pre_logits(features)
            out = clf.forward_head(features)
        else:  # an Ensemble: same interface, its own embed if it has one
            out = model(x)
            emb = model.embed(x) if hasattr(model, "embed") else None
        logits.append(out.float().cpu().numpy())
        if emb is not None:
            feats.append(emb.float().cpu().numpy())
    return Outputs(np.concatenate(logits), np.concatenate(feats) if feats else None)


def array_batches(images: np.ndarray, batch_size: int = 64) -> Iterable[torch.Tensor]:
    for start in range(0, len(images), batch_size):
        yield torch.from_numpy(np.array(images[start:start + batch_size]))  # a copy: memmaps are read-only


# ----------------------------------------------------------------------------------------------- scores


def score_msp(out: Outputs, detector: dict | None = None) -> np.ndarray:
    return -torch.softmax(torch.from_numpy(out.logits).double(), dim=1).max(dim=1).values.numpy()


def score_energy(out: Outputs, detector: dict | None = None) -> np.ndarray:
    energy = -torch.logsumexp(torch.from_numpy(out.logits).double(), dim=1).numpy()
    if np.allclose(energy, 0.0, atol=1e-6):  # log-probabilities (an ensemble): logsumexp is 0 for every input
        raise MedclfError("energy score needs logits; this model outputs log-probabilities (ensemble)")
    return energy


def score_mahalanobis(out: Outputs, detector: dict | None) -> np.ndarray:
    if out.features is None:
        raise MedclfError("mahalanobis score needs penultimate features; this model has no embed()")
    if detector is None or "means" not in detector:
        raise MedclfError("mahalanobis score needs a fitted detector (class means and precision)")
    return mahalanobis_scores(out.features, np.asarray(detector["means"]), np.asarray(detector["precision"]))


OOD_SCORES: dict[str, Callable[[Outputs, dict | None], np.ndarray]] = {
    "msp": score_msp, "energy": score_energy, "mahalanobis": score_mahalanobis,
}


def get_score(name: str) -> Callable[[Outputs, dict | None], np.ndarray]:
    if name not in OOD_SCORES:
        raise MedclfError(f"unknown OOD score '{name}' (valid: {', '.join(OOD_SCORES)})")
    return OOD_SCORES[name]


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


def make_detector(score: str, threshold: float, accept_rate: float, maha: dict | None, fitted_on: dict) -> dict:
    """The dict stored as `contract.ood` (plain types only)."""
    det = {"version": DETECTOR_VERSION, "score": score, "threshold": float(threshold),
           "accept_rate": float(accept_rate), "higher_is_ood": True, "fitted_on": fitted_on}
    if maha is not None:
        det.update(means=np.where(np.isnan(maha["means"]), None, maha["means"]).tolist(),
                   precision=np.asarray(maha["precision"]).tolist(), estimator=maha["estimator"])
    return det


def detector_scores(detector: dict, out: Outputs) -> np.ndarray:
    maha = None
    if "means" in detector:
        means = np.array([[np.nan if v is None else v for v in row] for row in detector["means"]], dtype=float)
        maha = {"means": means, "precision": np.asarray(detector["precision"], dtype=float)}
    return get_score(detector["score"])(out, maha)


def ood_flags(run, images_uint8: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(scores, flags) for uint8 `B x S x S` images with the detector stored in `run.contract.ood`.

    `flags[i]` is True when image i is outside the distribution ("not like the training images"): its score
    is above the stored threshold, which accepts `accept_rate` of the validation images.
    """
    detector = run.contract.ood
    if not detector:
        raise MedclfError(f"{run.run_dir}: the model has no OOD detector; run `medclf ood {run.run_dir} --ood CACHE`")
    images = np.asarray(images_uint8)
    if images.ndim == 2:
        images = images[None]
    device = next(run.model.parameters()).device
    out = model_outputs(run.model, run.contract, array_batches(images, batch_size), device)
    scores = detector_scores(detector, out)
    return scores, scores > float(detector["threshold"])
