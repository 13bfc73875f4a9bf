"""Real data (skips without ../shared/data): the RSNA sample's three detailed classes, prepared, trained (a few
steps), evaluated and reported; metrics.json's per-class and macro AUC are scikit-learn's one-vs-rest AUC on the
predictions table, and the classes are the detailed class file's."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from medclf.config import load_config
from medclf.data.cache import Cache
from medclf.data.prepare import prepare_rsna
from medclf.engine.evaluate import evaluate_run
from medclf.engine.train import train
from medclf.report.html import build_report

pytestmark = pytest.mark.slow  # trains a model or starts a subprocess (make test-fast skips it)

CLASSES = ["Lung Opacity", "No Lung Opacity / Not Normal", "Normal"]


def test_detailed_rsna_from_dicom_to_report(shared, tmp_path):
    sample = shared("rsna-sample")
    cache = prepare_rsna(sample / "stage_2_train_images", sample / "stage_2_train_labels.csv", tmp_path / "cache",
                         classes=sample / "stage_2_detailed_class_info.csv", label_mode="detailed", size=32,
                         workers=1, progress=False)
    opened = Cache.open(cache)
    assert opened.task == "multiclass" and sorted(opened.label_names) == CLASSES
    details = pd.read_csv(sample / "stage_2_detailed_class_info.csv").drop_duplicates("patientId")
    truth = dict(zip(details["patientId"], details["class"]))
    assert all(truth[i] == n for i, n in zip(opened.manifest["id"], opened.manifest["label_name"]))
    cfg = load_config("cpu_small", ["model.input_size=32", "train.epochs=1", "train.max_steps_per_epoch=2",
                                    "eval.ood_detector=false", "train.device=cpu"])
    run = train(cfg, cache, tmp_path / "run", progress=False)
    evaluate_run(run, split="test", n_boot=20, device="cpu", progress=False)
    table = pd.read_csv(tmp_path / "run" / "predictions_test.csv")
    probs = table[[f"prob_{n}" for n in opened.label_names]].to_numpy()
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())["multiclass"]
    assert saved["macro"]["roc_auc"] == pytest.approx(roc_auc_score(table["label"], probs, multi_class="ovr"))
    for k, name in enumerate(opened.label_names):
        assert saved["per_class"][name]["roc_auc"] == pytest.approx(roc_auc_score(table["label"] == k, probs[:, k]))
    page = build_report(tmp_path / "run").read_text(encoding="utf-8")
    assert "<h4>Per class</h4>" in page and "Confusion matrix (true class in rows)" in page
    assert (tmp_path / "run" / "roc_classes_test.png").stat().st_size > 0 and "ROC curve per class" in page
