"""Vectorised bootstrap against per-resample scikit-learn, and the paired bootstrap test."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, recall_score, roc_auc_score

from medclf.errors import MedclfError
from medclf.evaluation.bootstrap import (
    bootstrap_metrics,
    group_counts,
    metrics_from_group_counts,
    paired_bootstrap,
    percentile_interval,
    resample_indices,
)


def _data(n: int, seed: int = 0, signal: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, np.clip(rng.normal(0.35 + signal * y, 0.2), 0, 1).round(3)


def test_vectorised_resamples_match_sklearn_per_resample():
    y, p = _data(300)
    scores, codes = np.unique(p, return_inverse=True)
    idx = next(resample_indices(len(y), 5, seed=3))
    pos, neg = group_counts(y.astype(np.int8), codes, len(scores), idx)
    got = metrics_from_group_counts(pos, neg, scores >= 0.5)
    for r in range(5):
        yr, pr = y[idx[r]], p[idx[r]]
        assert got["roc_auc"][r] == pytest.approx(roc_auc_score(yr, pr), abs=1e-12)
        assert got["pr_auc"][r] == pytest.approx(average_precision_score(yr, pr), abs=1e-12)
        assert got["f1"][r] == pytest.approx(f1_score(yr, pr >= 0.5))
        assert got["recall"][r] == pytest.approx(recall_score(yr, pr >= 0.5))
    # bootstrap_metrics draws the same resamples for the same seed
    dist = bootstrap_metrics(y, p, 0.5, n_boot=5, seed=3)
    np.testing.assert_allclose(dist["roc_auc"], got["roc_auc"])


def test_one_class_resamples_are_skipped_for_auc():
    y = np.array([1, 0, 0, 0, 0])  # many resamples miss the single positive
    p = np.array([0.9, 0.1, 0.2, 0.3, 0.4])
    dist = bootstrap_metrics(y, p, 0.5, n_boot=400, seed=0)
    missing = np.isnan(dist["roc_auc"])
    assert 0.2 < missing.mean() < 0.5  # P(no positive drawn) = 0.8**5 = 0.33
    assert percentile_interval(dist["roc_auc"]) == [1.0, 1.0]


def test_percentile_interval():
    assert percentile_interval(np.arange(101.0)) == pytest.approx([2.5, 97.5])
    assert percentile_interval(np.arange(101.0), level=0.9) == pytest.approx([5.0, 95.0])
    assert percentile_interval(np.array([np.nan, np.nan])) is None


def test_identical_models_differ_by_zero():
    y, p = _data(400)
    for metric in ("roc_auc", "f1"):
        r = paired_bootstrap(y, p, p, metric=metric, n_boot=300, seed=1)
        assert r["diff"] == 0.0 and r["ci"] == [0.0, 0.0] and r["p_value"] == 1.0


def test_clearly_better_model_is_significant():
    y, strong = _data(400, seed=2, signal=0.4)
    weak = np.random.default_rng(5).uniform(0, 1, y.size)  # no signal
    auc = paired_bootstrap(y, weak, strong, metric="roc_auc", n_boot=500, seed=0)
    assert auc["a"] == pytest.approx(roc_auc_score(y, weak)) and auc["b"] == pytest.approx(roc_auc_score(y, strong))
    assert auc["diff"] == pytest.approx(auc["b"] - auc["a"]) and auc["diff"] > 0.3
    assert auc["ci"][0] > 0 and auc["p_value"] < 0.05
    f1 = paired_bootstrap(y, weak, strong, metric="f1", threshold_a=0.5, threshold_b=0.5, n_boot=500, seed=0)
    assert f1["diff"] > 0 and f1["p_value"] < 0.05
    # swapping the models flips the sign
    back = paired_bootstrap(y, strong, weak, metric="roc_auc", n_boot=500, seed=0)
    assert back["diff"] == pytest.approx(-auc["diff"]) and back["p_value"] == auc["p_value"]


def test_unknown_metric():
    with pytest.raises(MedclfError, match="unknown metric 'brier'.*roc_auc"):
        paired_bootstrap([0, 1], [0.1, 0.9], [0.2, 0.8], metric="brier")
