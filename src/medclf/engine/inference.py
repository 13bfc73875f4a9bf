"""Prediction over a cache split on every rank under torchrun, through the run layer's Predictor."""

from __future__ import annotations

import numpy as np

from medclf.data.dataset import CacheDataset
from medclf.engine.distributed import DistContext, gather_by_position, shard_positions
from medclf.runs import Predictor


def predict_sharded(predictor: Predictor, dataset: CacheDataset, dist: DistContext, batch_size: int = 64) -> np.ndarray:
    """Probabilities `N x K` of `dataset` split over the ranks: each predicts every `world_size`-th item, and every
    rank gets the full array back in dataset order (so metrics equal a single-process evaluation)."""
    if not dist.enabled:
        return predictor.predict_dataset(dataset, batch_size=batch_size).probs
    positions = shard_positions(len(dataset), dist)
    part = CacheDataset(dataset.cache, indices=dataset.indices[positions])
    probs = predictor.predict_dataset(part, batch_size=batch_size).probs
    return gather_by_position(positions, probs, len(dataset), dist)
