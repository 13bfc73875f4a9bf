"""Multiclass metrics equal scikit-learn's on the same arrays; the bootstrap's fast formulas agree with them."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from medclf.errors import MedclfError
from medclf.evaluation.multiclass import _point, _resample_values, multiclass_metrics

NAMES = ["Normal", "No Lung Opacity / Not Normal", "Lung Opacity"]


def softmax_probs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[y]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, p


def test_every_figure_equals_scikit_learn():
    y, p = softmax_probs(200, 0)
    m = multiclass_metrics(y, p, NAMES, n_boot=50)
    called = p.argmax(axis=1)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, called))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, called))
    assert m["cohen_kappa"] == pytest.approx(cohen_kappa_score(y, called))
    assert m["confusion"] == confusion_matrix(y, called).tolist()
    for average in ("macro", "weighted"):
        assert m[average]["roc_auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average=average))
        assert m[average]["f1"] == pytest.approx(f1_score(y, called, average=average))
    assert m["micro"]["precision"] == pytest.approx(precision_score(y, called, average="micro"))
    for i, name in enumerate(NAMES):
        c = m["per_class"][name]
        assert c["roc_auc"] == pytest.approx(roc_auc_score(y == i, p[:, i]))
        assert c["pr_auc"] == pytest.approx(average_precision_score(y == i, p[:, i]))
        assert c["sensitivity"] == pytest.approx(recall_score(y == i, called == i))
        assert c["specificity"] == pytest.approx(recall_score(y != i, called != i))
        assert c["n_pos"] == int((y == i).sum())
        lo, hi = c["ci"]["roc_auc"]
        assert lo <= c["roc_auc"] <= hi


def test_a_hand_computed_confusion():
    # three images of each class; one Lung Opacity image is called Normal
    y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    p = np.full((9, 3), 0.1)
    p[np.arange(9), [0, 0, 0, 1, 1, 1, 2, 2, 0]] = 0.8
    m = multiclass_metrics(y, p, NAMES, n_boot=0)
    assert m["confusion"] == [[3, 0, 0], [0, 3, 0], [1, 0, 2]]
    assert m["accuracy"] == pytest.approx(8 / 9)
    assert m["per_class"]["Lung Opacity"]["sensitivity"] == pytest.approx(2 / 3)
    assert m["per_class"]["Normal"]["precision"] == pytest.approx(3 / 4)
    assert m["per_class"]["Normal"]["specificity"] == pytest.approx(5 / 6)
    assert m["ci"]["accuracy"] is None  # no resamples asked for


def test_the_bootstrap_formulas_equal_the_point_ones():
    y, p = softmax_probs(120, 1)
    point, fast = _point(y, p, NAMES), _resample_values(y, p, p.argmax(axis=1), NAMES)
    assert fast["accuracy"] == pytest.approx(point["accuracy"])
    assert fast["balanced_accuracy"] == pytest.approx(point["balanced_accuracy"])
    assert fast["cohen_kappa"] == pytest.approx(point["cohen_kappa"])
    assert fast["macro_roc_auc"] == pytest.approx(point["macro"]["roc_auc"])
    for name in NAMES:
        for key in ("roc_auc", "pr_auc", "sensitivity", "specificity", "precision", "f1"):
            assert fast[f"{name}/{key}"] == pytest.approx(point["per_class"][name][key])


def test_an_absent_class_leaves_its_auc_and_the_averages_undefined():
    y, p = softmax_probs(60, 2)
    keep = y != 1
    m = multiclass_metrics(y[keep], p[keep], NAMES, n_boot=20)
    assert m["per_class"][NAMES[1]]["roc_auc"] is None and m["macro"]["roc_auc"] is None
    assert m["per_class"][NAMES[0]]["roc_auc"] is not None


def test_bad_shapes_are_one_line_errors():
    with pytest.raises(MedclfError, match=r"shape \(N, 3\)"):
        multiclass_metrics([0, 1], np.ones((2, 2)) / 2, NAMES)


@pytest.mark.slow
def test_a_three_class_run_evaluates_to_scikit_learns_ovr_auc(tmp_path):
    """Train a tiny 3-class run end to end; metrics_test.json's per-class and macro AUC are scikit-learn's on the
    predictions table it wrote, and the binary keys (positive class against the rest) are still there."""
    import json

    import pandas as pd

    from medclf.config import load_config
    from medclf.data.cache import write_cache
    from medclf.engine.evaluate import evaluate_run
    from medclf.engine.train import train

    rng = np.random.default_rng(0)
    n, size = 90, 32
    labels = np.arange(n) % 3
    images = rng.integers(40, 90, size=(n, size, size)).astype(np.uint8)
    images[labels == 1, 4:12, 4:12] = 220  # class 1: a bright square top left; class 2: bottom right
    images[labels == 2, 20:28, 20:28] = 220
    manifest = pd.DataFrame({"index": np.arange(n), "id": [f"im{i:03d}" for i in range(n)],
                             "patient_id": [f"p{i:03d}" for i in range(n)], "label": labels,
                             "label_name": np.array(NAMES)[labels], "boxes": "[]", "view": "", "sex": "", "age": "",
                             "source": "synthetic",
                             "split": np.where(np.arange(n) % 5 < 3, "train", np.where(np.arange(n) % 5 == 3, "val",
                                                                                      "test"))})
    write_cache(tmp_path / "cache", images, manifest,
                        {"source": "synthetic", "size": size, "label_names": NAMES, "positive_index": 2,
                         "label_mode": "detailed"})
    cfg = load_config(None, ["model.input_size=32", "train.epochs=1", "data.batch_size=8", "train.device=cpu",
                             "eval.ood_detector=false", "eval.n_boot=0"])
    run = train(cfg, tmp_path / "cache", tmp_path / "run", progress=False)
    metrics = evaluate_run(run, split="test", n_boot=20, device="cpu", progress=False)
    table = pd.read_csv(tmp_path / "run" / "predictions_test.csv")
    probs = table[[f"prob_{name}" for name in NAMES]].to_numpy()
    saved = json.loads((tmp_path / "run" / "metrics_test.json").read_text())["multiclass"]
    assert saved["macro"]["roc_auc"] == pytest.approx(roc_auc_score(table["label"], probs, multi_class="ovr"))
    for i, name in enumerate(NAMES):
        assert saved["per_class"][name]["roc_auc"] == pytest.approx(roc_auc_score(table["label"] == i, probs[:, i]))
    assert sum(map(sum, saved["confusion"])) == len(table) == 18
    assert metrics["positive_index"] == 2 and "roc_auc" in metrics  # the binary view of Lung Opacity stays

    from medclf.report.html import build_report

    page = build_report(run).read_text(encoding="utf-8")
    auc = saved["per_class"]["Lung Opacity"]["roc_auc"]
    assert "<h4>Per class</h4>" in page and "<td>Lung Opacity</td><td class=\"num\">6</td>" in page
    assert f"{auc:.3f} [" in page and "Confusion matrix (true class in rows)" in page
