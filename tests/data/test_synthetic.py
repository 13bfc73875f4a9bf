"""The synthetic RSNA-layout dataset: layout, headers, determinism, speed."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pandas as pd
import pydicom

from medclf.data.synthetic import make_synthetic_rsna


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


def test_layout_and_headers(synthetic_rsna):
    images = sorted((synthetic_rsna / "stage_2_train_images").glob("*.dcm"))
    assert [p.stem for p in images] == [f"synthetic-{i:04d}" for i in range(40)]
    labels = pd.read_csv(synthetic_rsna / "stage_2_train_labels.csv")
    classes = pd.read_csv(synthetic_rsna / "stage_2_detailed_class_info.csv")
    assert list(labels.columns) == ["patientId", "x", "y", "width", "height", "Target"]
    per_patient = labels.groupby("patientId")["Target"].max()
    assert len(per_patient) == 40 and per_patient.sum() == 12  # round(40 * 0.3)
    assert len(classes) == len(labels) and (classes["patientId"] == labels["patientId"]).all()
    assert ((classes["class"] == "Lung Opacity") == (labels["Target"] == 1)).all()
    boxes = labels.dropna()
    assert (boxes[["x", "y"]] >= 0).all().all() and (boxes["x"] + boxes["width"] <= 128).all()
    assert (boxes["y"] + boxes["height"] <= 128).all() and (boxes["width"] >= 10).all()
    ds = pydicom.dcmread(images[0])
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
    assert (ds.PhotometricInterpretation, ds.BitsStored, ds.Rows, ds.Columns) == ("MONOCHROME2", 8, 128, 128)
    assert ds.SeriesDescription in ("view: PA", "view: AP") and ds.ViewPosition == ds.SeriesDescription[-2:]
    assert ds.PatientSex in ("M", "F") and ds.PatientAge.isdigit() and ds.PatientID == "synthetic-0000"
    assert ds.pixel_array.shape == (128, 128)


def test_deterministic_and_fast(synthetic_rsna, tmp_path):
    start = time.perf_counter()
    again = make_synthetic_rsna(tmp_path / "again", n_patients=40, size=128, seed=0)
    seconds = time.perf_counter() - start
    assert seconds < 2.0, seconds
    assert _digest(again) == _digest(synthetic_rsna)
    other = make_synthetic_rsna(tmp_path / "other", n_patients=40, size=128, seed=1)
    assert _digest(other) != _digest(synthetic_rsna)


def test_positives_are_learnable_by_a_tiny_cnn(synthetic_cache, synthetic_rsna, tmp_path):
    """3 epochs of a 3-layer CNN on the 40 patients at 64 px separate a fresh seed's patients (AUC > 0.9)."""
    import numpy as np
    import torch

    from medclf.data.cache import Cache
    from medclf.data.prepare import prepare_rsna

    fresh_root = make_synthetic_rsna(tmp_path / "fresh", n_patients=40, size=128, seed=1)
    fresh = Cache.open(prepare_rsna(fresh_root / "stage_2_train_images", fresh_root / "stage_2_train_labels.csv",
                                    tmp_path / "fresh-cache", size=64, workers=1, progress=False))
    train = Cache.open(synthetic_cache)

    def tensor(cache):
        return (torch.tensor(np.asarray(cache.images), dtype=torch.float32).unsqueeze(1) / 255 - 0.5) / 0.25

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny net: one thread is faster than a pool spinning on a shared machine
    try:
        prob = _train_and_predict(tensor(train), torch.tensor(train.labels()), tensor(fresh))
    finally:
        torch.set_num_threads(threads)
    pos, neg = prob[fresh.labels() == 1], prob[fresh.labels() == 0]
    auc = ((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())  # Mann-Whitney
    assert auc > 0.9, auc


def _train_and_predict(x, y, x_test):
    import torch
    import torch.nn as nn

    torch.manual_seed(0)

    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2)]

    net = nn.Sequential(*block(1, 8), *block(8, 16), *block(16, 32), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(32, 2))
    params = list(net.parameters())
    velocity = [torch.zeros_like(p) for p in params]
    for _ in range(3):
        for batch in torch.randperm(len(y)).split(8):
            loss = nn.functional.cross_entropy(net(x[batch]), y[batch])
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():  # SGD with momentum by hand: torch.optim's first use imports dynamo (~3 s)
                for p, v, g in zip(params, velocity, grads):
                    v.mul_(0.9).add_(g)
                    p.sub_(0.02 * v)
    net.eval()
    with torch.no_grad():
        return net(x_test).softmax(1)[:, 1].numpy()


def test_the_cache_and_its_runs_know_the_data_are_synthetic(synthetic_rsna, synthetic_cache):
    from medclf.data.cache import Cache
    from medclf.data.summary import data_summary

    marker = {"note": "synthetic images made by medclf (not real patients)",
              "generator": "medclf.data.synthetic.make_synthetic_rsna", "n_patients": 40, "size": 128, "seed": 0,
              "pos_frac": 0.3}
    assert json.loads((synthetic_rsna / "SYNTHETIC.json").read_text()) == marker
    cache = Cache.open(synthetic_cache)
    assert cache.meta["source"] == "rsna" and cache.meta["synthetic"] == marker
    assert data_summary(cache)["synthetic"] == marker  # what the run's data_summary.json and report read
