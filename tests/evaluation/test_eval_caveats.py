"""metric_warnings: the reasons a figure may mean nothing, on hand-made metrics with known answers."""

from __future__ import annotations

import numpy as np

from medclf.evaluation.caveats import metric_warnings, threshold_warning
from medclf.evaluation.metrics import binary_metrics


def test_one_positive_gives_counts_and_collapsed_intervals():
    # the case: `recall 1.000 [1.000, 1.000]` from one positive
    y = np.array([0] * 30 + [1])
    p = np.r_[np.linspace(0.0, 0.4, 30), 0.9]
    m = binary_metrics(y, p, 0.5, n_boot=200, seed=0)
    assert m["recall"] == 1.0 and m["ci"]["recall"] == [1.0, 1.0]
    warnings = metric_warnings(m)
    assert warnings[0] == ("only 1 positive (< 10): sensitivity, precision and F1 and ROC AUC rest on too few "
                           "images to mean much")
    assert warnings[1].startswith("the 95% interval of recall, ") and "collapses to a point" in warnings[1]
    assert len(warnings) == 2


def test_auc_below_chance_and_few_negatives():
    y = np.array([1] * 20 + [0] * 5)
    p = np.r_[np.linspace(0.1, 0.5, 20), np.linspace(0.6, 0.9, 5)]  # every negative above every positive
    m = binary_metrics(y, p, 0.5, n_boot=0)
    assert metric_warnings(m, min_class=5) == ["ROC AUC 0.000 is below 0.5: the model ranks these images worse "
                                               "than chance"]
    assert metric_warnings(m)[0].startswith("only 5 negatives (< 10): specificity")


def test_enough_images_and_spread_intervals_give_none():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 100)
    p = np.clip(rng.normal(0.4 + 0.2 * y, 0.15), 0, 1)
    m = binary_metrics(y, p, 0.5, n_boot=200, seed=0)
    assert metric_warnings(m) == []


def test_threshold_warning_only_for_a_fallback():
    assert threshold_warning("validation", "f1 on 270 validation images (135 positives)") is None
    assert threshold_warning(None, None) is None  # a checkpoint older than the reasons
    assert threshold_warning("default", "default 0.5: validation has 1 positive (< 10)") == \
        "the operating threshold is not fitted to data (default 0.5: validation has 1 positive (< 10))"
