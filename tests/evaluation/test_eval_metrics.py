"""binary_metrics and write_evaluation against hand-computed values and scikit-learn."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from medclf.engine.evaluate import write_evaluation
from medclf.errors import DataError, MedclfError
from medclf.evaluation.metrics import METRIC_KEYS, binary_metrics

# 4 positives, 6 negatives; at threshold 0.5: called positive = 0.9, 0.8, 0.6 (pos) and 0.7, 0.55 (neg)
Y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
P = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1, 0.05, 0.55])


def test_counts_and_rates_by_hand():
    m = binary_metrics(Y, P, 0.5, n_boot=200)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (3, 2, 1, 4)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert m["specificity"] == pytest.approx(4 / 6)
    assert m["accuracy"] == pytest.approx(7 / 10)
    # AUC: of the 24 positive-negative pairs the positive scores higher in 6 + 6 + 5 + 3 = 20
    assert m["roc_auc"] == pytest.approx(20 / 24)
    # AP: precision at each positive in descending order: 1/1, 2/2, 3/4, 4/7
    assert m["pr_auc"] == pytest.approx((1 + 1 + 3 / 4 + 4 / 7) / 4)
    assert (m["n"], m["n_pos"], m["threshold"]) == (10, 4, 0.5)
    assert set(METRIC_KEYS) | {"ci"} == set(m)


def test_threshold_is_inclusive():
    m = binary_metrics(Y, P, 0.6, n_boot=0)
    assert (m["tp"], m["fp"]) == (3, 1)  # 0.6 itself is called positive
    assert m["ci"] == {k: None for k in m["ci"]}


def test_aucs_match_sklearn_on_random_data():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 500)
    p = np.clip(rng.normal(0.4 + 0.2 * y, 0.25), 0, 1).round(2)  # rounding creates ties
    m = binary_metrics(y, p, 0.5, n_boot=0)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, p), abs=1e-12)


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)


def test_ci_brackets_estimate_and_narrows_with_n():
    widths = {}
    for n in (200, 5000):
        y, p = _data(n)
        m = binary_metrics(y, p, 0.5, n_boot=500, seed=0)
        for key, (lo, hi) in m["ci"].items():
            assert lo <= m[key] <= hi, (n, key)
        widths[n] = {k: hi - lo for k, (lo, hi) in m["ci"].items()}
    for key in widths[200]:
        assert widths[5000][key] < widths[200][key] / 2.5, key  # width shrinks about as 1/sqrt(n): 5x here


def test_undefined_values_are_none_and_json_safe():
    y = np.zeros(20, dtype=int)
    p = np.linspace(0.0, 0.4, 20)
    m = binary_metrics(y, p, 0.5, n_boot=100)
    assert m["roc_auc"] is None and m["pr_auc"] is None and m["recall"] is None
    assert m["precision"] is None  # nothing called positive
    assert m["f1"] is None  # no positives and no positive calls
    assert m["specificity"] == 1.0 and m["accuracy"] == 1.0
    assert m["ci"]["roc_auc"] is None and m["ci"]["precision"] is None
    assert m["ci"]["specificity"] == [1.0, 1.0]
    json.dumps(m, allow_nan=False)  # raises on NaN


def test_f1_zero_not_undefined_when_positives_missed():
    m = binary_metrics([1, 1, 0], [0.1, 0.2, 0.3], 0.9, n_boot=0)
    assert m["precision"] is None and m["f1"] == 0.0 and m["recall"] == 0.0


@pytest.mark.parametrize(
    "y, p, message",
    [([0, 1], [0.5], "equal length"), ([0, 2], [0.1, 0.2], "0/1"), ([0, 1], [0.1, 1.5], "within"),
     ([], [], "empty"), ([0, 1], [0.1, float("nan")], "finite")],
)
def test_bad_inputs_raise(y, p, message):
    with pytest.raises(MedclfError, match=message):
        binary_metrics(y, p, 0.5)


@pytest.mark.slow  # ~2 s CPU on the loaded 2-core machine: too slow for make test-fast
def test_bootstrap_is_fast_on_30k_predictions():
    y, p = _data(30_000)
    start = time.perf_counter()
    m = binary_metrics(y, p, 0.5, n_boot=1000)
    elapsed = time.perf_counter() - start
    assert m["ci"]["roc_auc"][0] < m["roc_auc"] < m["ci"]["roc_auc"][1]
    assert elapsed < 10.0, elapsed  # about 1 s on 2 shared cores; generous for a busy CI machine


@pytest.mark.slow  # ~2 s CPU on the loaded 2-core machine: too slow for make test-fast
def test_write_evaluation_writes_files(tmp_path):
    # three classes, positive_index 2: binary y = (label == 2)
    df = pd.DataFrame({"id": [f"im{i}" for i in range(10)], "label": np.where(Y == 1, 2, [0, 1] * 5),
                       "prob": P, "split": "test", "model": "m"})
    m = write_evaluation(df, 0.5, tmp_path, "test", n_boot=50, positive_index=2,
                             label_names=["normal", "other", "opacity"])
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (3, 2, 1, 4)
    saved = json.loads((tmp_path / "metrics_test.json").read_text())
    assert saved == json.loads((tmp_path / "metrics.json").read_text())
    assert saved["split"] == "test" and saved["positive_index"] == 2 and saved["f1"] == pytest.approx(2 / 3)
    for kind in ("confusion", "roc", "pr", "calibration"):
        assert (tmp_path / f"{kind}_test.png").stat().st_size > 1000

    write_evaluation(df, 0.5, tmp_path / "v", "val", n_boot=0)
    assert (tmp_path / "v" / "metrics_val.json").is_file() and not (tmp_path / "v" / "metrics.json").exists()


def test_write_evaluation_errors(tmp_path):
    with pytest.raises(DataError, match="prob"):
        write_evaluation(pd.DataFrame({"id": [1], "label": [1]}), 0.5, tmp_path, "test")
    with pytest.raises(DataError, match="1 row"):
        write_evaluation(pd.DataFrame({"label": [1, None], "prob": [0.5, 0.2]}), 0.5, tmp_path, "test")
    with pytest.raises(MedclfError, match="file name"):
        write_evaluation(pd.DataFrame({"label": [1], "prob": [0.5]}), 0.5, tmp_path, "../x")


def test_single_class_split_still_evaluates(tmp_path):
    df = pd.DataFrame({"id": range(6), "label": [0] * 6, "prob": [0.1, 0.2, 0.3, 0.6, 0.7, 0.05]})
    m = write_evaluation(df, 0.5, tmp_path, "test", n_boot=20)
    assert m["roc_auc"] is None and m["fp"] == 2 and not math.isnan(m["ece"])
    assert (tmp_path / "roc_test.png").is_file()
