"""Fitting a run's out-of-distribution detector, and the model outputs OOD scores are measured on (the
Predictor's probabilities, so the scores see exactly what `predict` sees).

`fit_detector` is what `medclf train` does when it ends and what `medclf ood` refits: penultimate features of
the training images (at most `fit_max`, seeded) -> Mahalanobis class means and shared precision; the threshold
accepts `accept_rate` of the validation images, scored exactly as the Predictor will score new images.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from tqdm import tqdm

from medclf.data.dataset import seeded_subset
from medclf.data.samplers import sampling_classes
from medclf.errors import DataError, MedclfError
from medclf.evaluation.ood import Outputs, fit_mahalanobis, make_detector
from medclf.runs.graph import MahalanobisScore
from medclf.runs.predictor import Predictor


def fit_detector(predictor: Predictor, train_set, val_set, accept_rate: float = 0.95, fit_max: int | None = 5000,
                 seed: int = 0, batch_size: int = 64, progress: bool = False, fitted_on: dict | None = None) -> dict:
    """A Mahalanobis detector for the predictor's (single) model; see the module docstring."""
    if predictor.is_ensemble:
        raise MedclfError("an OOD detector is fitted per model; an ensemble uses its members' detectors")
    if not 0.0 < accept_rate < 1.0:
        raise MedclfError(f"accept rate must be in (0, 1), got {accept_rate}")
    fit_set = seeded_subset(train_set, fit_max, seed)
    if len(fit_set) < 2:
        raise DataError(f"{train_set.cache.path}: {len(fit_set)} training image(s); the OOD detector needs >= 2")
    if len(val_set) == 0:
        raise DataError(f"{val_set.cache.path}: no validation images to set the OOD threshold on")
    features = dataset_embeddings(predictor, fit_set, batch_size, progress, "ood: fit on train")
    maha = fit_mahalanobis(features, sampling_classes(fit_set))  # multilabel: by rarest label
    val_features = dataset_embeddings(predictor, val_set, batch_size, progress, "ood: threshold on val")
    detector = make_detector(0.0, accept_rate, maha, {})
    with torch.no_grad():
        val_scores = MahalanobisScore(detector)(torch.from_numpy(val_features)).numpy()
    detector["threshold"] = float(np.quantile(val_scores, accept_rate, method="higher"))
    detector["fitted_on"] = {"cache_hash": str(train_set.cache.meta.get("content_hash", "")), "fit_split": "train",
                             "n_fit": len(fit_set), "threshold_split": "val", "n_threshold": len(val_set),
                             "val_accepted": float(np.mean(val_scores <= detector["threshold"])),
                             **(fitted_on or {})}
    return detector


def dataset_embeddings(predictor: Predictor, dataset, batch_size: int = 64, progress: bool = False,
                       desc: str = "features") -> np.ndarray:
    """Penultimate features `N x D` of a (single-model) predictor for every image of a CacheDataset."""
    from medclf.data.dataset import make_loader

    loader = make_loader(dataset, batch_size=batch_size)
    parts = [predictor.embeddings(images)[0] for images, _, _ in tqdm(loader, desc=desc, disable=not progress,
                                                                       leave=False)]
    return np.concatenate(parts)


@torch.no_grad()
def model_outputs(predictor: Predictor, batches: Iterable[torch.Tensor]) -> Outputs:
    """What the OOD scores read, per uint8 batch: the Predictor's probabilities (its backend, test-time flip,
    ensemble combination and activation), and for a single model its logits averaged over the same views and its
    penultimate features of the unflipped image (as the graph's Mahalanobis score reads them). An ensemble has
    neither logits nor one feature space of its own."""
    module = predictor.module.eval()
    single = not predictor.is_ensemble
    probs, logits, feats = [], [], []
    for images in batches:
        images = torch.as_tensor(images)
        probs.append(predictor.predict_arrays(images).probs)
        if single:
            on_device = images.to(predictor.device)
            logits.append(module.view_logits(on_device).cpu().numpy())
            feats.append(predictor.embeddings(on_device)[0])
    return Outputs(np.concatenate(probs), np.concatenate(logits) if single else None,
                   np.concatenate(feats) if single else None, multilabel=predictor.contract.multilabel)

