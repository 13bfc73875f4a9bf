"""Multi-label sources: the synthetic multi-label cache, folder CSVs (`A|B` and 0/1 columns), MedMNIST (N, K)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medclf.data.cache import Cache
from medclf.data.synthetic import SHAPES, write_synthetic_multilabel
from medclf.tasks import label_counts, multi_hot


def test_synthetic_multilabel_cache(tmp_path):
    cache = Cache.open(write_synthetic_multilabel(tmp_path / "c", n=200, size=48, seed=0))
    assert cache.task == "multilabel" and cache.label_names == ["disc", "square", "bar"] == list(SHAPES)
    assert cache.images.shape == (200, 48, 48) and cache.images.dtype == np.uint8
    masks = cache.labels()
    hot = multi_hot(masks, 3)
    per_image = hot.sum(axis=1)
    assert {0, 1, 2}.issubset(set(per_image)) and 0.25 < hot.mean() < 0.45  # p = 0.35, independent
    counts = cache.meta["split_counts"]
    for split in ("train", "val", "test"):
        assert all(counts[split][name] >= 1 for name in SHAPES), counts
        assert list(label_counts(cache.labels(split), 3)) == [counts[split][n] for n in SHAPES]
    expected = ["|".join(n for n, h in zip(SHAPES, row) if h) or "No Finding" for row in hot]
    assert cache.manifest["label_name"].tolist() == expected
    assert cache.meta["synthetic"]["generator"].endswith("write_synthetic_multilabel")
    assert cache.meta["leakage_audit"]["ok"] and cache.positive_index == 0
    # a shape is bright on a dark background: images with no finding are darker than those with three
    assert cache.images[per_image == 0].mean() < cache.images[per_image >= 2].mean() - 5


def test_synthetic_multilabel_is_deterministic(tmp_path):
    a = Cache.open(write_synthetic_multilabel(tmp_path / "a", n=40, seed=3))
    b = Cache.open(write_synthetic_multilabel(tmp_path / "b", n=40, seed=3))
    assert a.meta["content_hash"] == b.meta["content_hash"]
