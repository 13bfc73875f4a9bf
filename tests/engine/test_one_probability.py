"""One run, one probability per image: with flip test-time augmentation (as the PneumoniaMNIST recipe uses),
`predict` on the validation images written as PNG files, `predict --engine onnx`, `/api/predict` and
`evaluate --split val` give the same probabilities (max |diff| <= 1e-4) and the same decisions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medclf.config import load_config
from medclf.data.prepare import prepare_medmnist
from medclf.engine.evaluate import evaluate_run
from medclf.engine.predict import predict_files
from medclf.engine.train import train

pytestmark = pytest.mark.slow  # trains a model or starts a subprocess (make test-fast skips it)


@pytest.fixture(scope="module")
def tta_run(tmp_path_factory):
    """A MedMNIST-style cache (8-bit values kept, norm none) and a ResNet18 run trained with eval.tta_flip."""
    root = tmp_path_factory.mktemp("tta")
    rng = np.random.default_rng(3)
    labels = (np.arange(90) % 3 == 0).astype(np.int64)
    images = rng.integers(0, 120, size=(90, 28, 28)).astype(np.uint8)
    for i in np.flatnonzero(labels):  # positives carry a bright square off centre (so the flip changes outputs)
        y, x = rng.integers(2, 12, size=2)
        images[i, y:y + 8, x:x + 8] = 230
    np.savez(root / "set.npz", train_images=images[:60], train_labels=labels[:60, None],
             val_images=images[60:], val_labels=labels[60:, None])
    cache = prepare_medmnist(root / "set.npz", root / "cache", progress=False)
    cfg = load_config(None, ["model.input_size=28", "train.epochs=2", "data.batch_size=10", "eval.tta_flip=true",
                             "eval.n_boot=0"])
    run = train(cfg, cache, root / "run", progress=False)
    evaluate_run(run, split="val", n_boot=0, progress=False)
    pngs = root / "pngs"
    pngs.mkdir()
    for i, image in enumerate(images[60:]):
        Image.fromarray(image).save(pngs / f"val-{i:03d}.png")
    return run, pngs


def evaluated(run: Path) -> pd.DataFrame:
    table = pd.read_csv(run / "predictions_val.csv", dtype={"id": str, "predicted": str})
    return table.sort_values("id").reset_index(drop=True)


def test_flip_changes_the_probabilities_so_the_check_means_something(tta_run):
    from medclf.runs import open_run

    run = open_run(tta_run[0])
    images = np.stack([np.asarray(Image.open(p)) for p in sorted(tta_run[1].iterdir())])
    with_flip = run.predictor().predict_arrays(images).probs
    without = run.predictor(tta_flip=False).predict_arrays(images).probs
    assert run.config.eval.tta_flip is True and np.abs(with_flip - without).max() > 1e-4


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_predict_on_png_files_equals_evaluate(tta_run, engine):
    run, pngs = tta_run
    table = predict_files(run, [pngs], progress=False, engine=engine, device="cpu")
    ev = evaluated(run)
    assert len(table) == len(ev) == 30 and (table["error"] == "").all()
    assert np.abs(table["prob"].to_numpy() - ev["prob"].to_numpy()).max() <= 1e-4
    # every image: the threshold sits between two validation scores, so a float32 engine cannot flip a call
    assert table["predicted"].tolist() == ev["predicted"].tolist()
    assert not (ev["prob"] == ev["threshold"]).any()
    assert (table["threshold"] == ev["threshold"]).all()


def test_api_predict_equals_evaluate(tta_run):
    from fastapi.testclient import TestClient

    from medclf.serve.app import create_app
    from medclf.serve.predictor import ServeModel

    run, pngs = tta_run
    files = sorted(pngs.iterdir())[:8]
    with TestClient(create_app(ServeModel.load(run, "cpu"), max_files=8)) as client:
        parts = [("files", (p.name, p.read_bytes(), "image/png")) for p in files]
        results = client.post("/api/predict", files=parts, params={"heatmap": "false"}).json()["results"]
    ev = evaluated(run).iloc[:8]
    assert np.abs(np.array([r["probability"] for r in results]) - ev["prob"].to_numpy()).max() <= 1e-4
    assert [r["label"] for r in results] == ev["predicted"].tolist()
