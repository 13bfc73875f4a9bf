"""Training, resuming, evaluating and predicting on the tiny cache, end to end through the library and CLI."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, confusion_matrix, f1_score, roc_auc_score

from medclf.config import load_config
from medclf.engine.evaluate import evaluate_run
from medclf.engine.predict import predict_files
from medclf.engine.train import train

pytestmark = pytest.mark.slow  # trains a model or starts a subprocess (make test-fast skips it)

TINY = ["model.name=resnet18", "model.input_size=32", "data.batch_size=8", "train.lr=0.003",
        "train.warmup_epochs=0", "train.weight_decay=0.0",
        "eval.threshold_min_class=4"]  # the tiny cache's val split has 4 positives: a fitted threshold


@pytest.fixture(scope="module")
def trained_run(tiny_cache, scratch, request):
    run = scratch(request, "run") / "run"
    train(load_config(None, TINY + ["train.epochs=3"]), tiny_cache, run, progress=False)
    return run


def test_run_directory_contents(trained_run):
    for name in ("config.yaml", "history.csv", "curves.png", "best.pt", "last.pt", "data_summary.json"):
        assert (trained_run / name).stat().st_size > 0, name
    history = pd.read_csv(trained_run / "history.csv")
    assert list(history.columns) == ["epoch", "train_loss", "val_loss", "val_auc", "val_f1", "val_accuracy", "lr",
                                     "seconds"]
    assert history["epoch"].tolist() == [1, 2, 3]
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    payload = torch.load(trained_run / "best.pt", weights_only=True)  # no pickled code in checkpoints
    contract = payload["contract"]
    assert contract["label_names"] == ["normal", "pneumonia"] and contract["input_size"] == 32
    assert 0.0 < contract["threshold"] <= 1.0
    summary = json.loads((trained_run / "data_summary.json").read_text())
    assert summary["split_counts"]["train"] == {"normal": 24, "pneumonia": 12}


def test_threshold_is_chosen_on_validation(trained_run):
    from medclf.evaluation.thresholds import between_scores, choose_threshold

    evaluate_run(trained_run, split="val", n_boot=0, progress=False)
    val = pd.read_csv(trained_run / "predictions_val.csv")
    contract = torch.load(trained_run / "best.pt", weights_only=True)["contract"]
    stored = contract["threshold"]
    chosen = choose_threshold(val["label"], val["prob"], method="f1")
    assert stored == pytest.approx(between_scores(val["prob"], chosen))  # midway below the chosen score
    assert not (val["prob"] == stored).any()
    assert (contract["threshold_source"], contract["threshold_reason"]) == (
        "validation", "f1 on 12 validation images (4 positives)")
    test_metrics = evaluate_run(trained_run, split="test", n_boot=0, progress=False)
    assert test_metrics["threshold"] == pytest.approx(stored)  # applied unchanged to test


def test_metrics_agree_with_sklearn(trained_run):
    m = evaluate_run(trained_run, split="test", n_boot=200, progress=False)
    table = pd.read_csv(trained_run / "predictions_test.csv")
    assert len(table) == 12 and set(table.columns) >= {"id", "label", "prob", "split", "model"}
    y, p = table["label"].to_numpy(), table["prob"].to_numpy()
    pred = (p >= m["threshold"]).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (tp, fp, fn, tn)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, p))
    assert m["f1"] == pytest.approx(f1_score(y, pred, zero_division=0))
    on_disk = json.loads((trained_run / "metrics.json").read_text())
    assert on_disk["tp"] == m["tp"] and "ci" in on_disk
    for plot in ("confusion_test.png", "roc_test.png", "pr_test.png", "calibration_test.png"):
        assert (trained_run / plot).exists()


def test_predict_files_reports_bad_ones(trained_run, tiny_cache, tmp_path):
    from medclf.data.cache import Cache

    cache = Cache.open(tiny_cache)
    Image.fromarray(np.asarray(cache.images[0])).save(tmp_path / "a.png")
    Image.fromarray(np.asarray(cache.images[3])).save(tmp_path / "b.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    table = predict_files(trained_run, [tmp_path], out=tmp_path / "out.csv", progress=False)
    assert table["path"].map(lambda s: Path(s).name).tolist() == ["a.png", "b.png", "broken.png"]
    good = table[table["error"] == ""]
    assert good["prob"].between(0, 1).all() and set(good["predicted"]) <= {"normal", "pneumonia"}
    assert "broken.png" in table.loc[2, "error"]
    assert (tmp_path / "out.csv").exists()


def _state(path):
    return torch.load(path, weights_only=True)["state_dict"]


def test_resume_after_kill_matches_uninterrupted(tiny_cache, tmp_path):
    overrides = TINY + ["train.epochs=3", "data.batch_size=4", "data.affine=true", "model.drop_rate=0.2"]
    straight = tmp_path / "straight"
    train(load_config(None, overrides), tiny_cache, straight, progress=False)

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "medclf", "train", "--data", str(tiny_cache), "--out", str(killed), *overrides]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "history.csv").exists() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # mid-run, typically inside epoch 2
    proc.wait()
    assert (killed / "last.pt").exists()
    assert len(pd.read_csv(killed / "history.csv")) < 3

    train(load_config(None, overrides), tiny_cache, killed, resume=True, progress=False)
    a, b = _state(straight / "last.pt"), _state(killed / "last.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert len(pd.read_csv(killed / "history.csv")) == 3


def test_training_into_existing_run_needs_resume(trained_run, tiny_cache):
    from medclf.errors import MedclfError

    with pytest.raises(MedclfError, match="--resume"):
        train(load_config(None, TINY + ["train.epochs=1"]), tiny_cache, trained_run, progress=False)


def test_cli_bad_override_exits_2_with_one_line(tiny_cache, tmp_path):
    r = subprocess.run([sys.executable, "-m", "medclf", "train", "--data", str(tiny_cache), "--out",
                        str(tmp_path / "r"), "train.epoch=1"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error:") and "unknown key 'train.epoch'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r" / "last.pt").exists()
