"""Plots are PNGs of the documented pixel size, with content where it belongs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medclf.errors import MedclfError
from medclf.evaluation import plots


def _rgb(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB")).astype(int)


def _expected_size(kind: str) -> tuple[int, int]:
    w, h = plots.FIGSIZE[kind]
    return int(w * plots.DPI), int(h * plots.DPI)


def _data(n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, n)
    return y, np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)


@pytest.mark.parametrize("cell, where", [("tp", (0, 0)), ("fp", (0, 1)), ("fn", (1, 0)), ("tn", (1, 1))])
def test_confusion_layout(tmp_path, cell, where):
    # rows = predicted (positive, negative), columns = actual (positive, negative): only `cell` is filled,
    # so only its quadrant is dark blue
    counts = {"tp": 0, "fp": 0, "fn": 0, "tn": 0, cell: 50}
    path = plots.plot_confusion(counts["tp"], counts["fp"], counts["fn"], counts["tn"], tmp_path / "c.png",
                                ("pneumonia", "normal"))
    img = _rgb(path)
    assert img.shape[1::-1] == _expected_size("confusion")
    dark_blue = (img[..., 0] < 60) & (img[..., 2] > 90)
    ys, xs = np.nonzero(dark_blue)
    assert dark_blue.sum() > 20_000  # one cell of about 200 x 200 px
    row, col = int(ys.mean() > img.shape[0] / 2), int(xs.mean() > img.shape[1] / 2)
    assert (row, col) == where


def test_confusion_rejects_negative_counts(tmp_path):
    with pytest.raises(MedclfError, match="non-negative"):
        plots.plot_confusion(-1, 0, 0, 0, tmp_path / "c.png")


@pytest.mark.parametrize("kind", ["roc", "pr", "calibration"])
def test_curve_plots(tmp_path, kind):
    y, p = _data()
    fn = {"roc": plots.plot_roc, "pr": plots.plot_pr, "calibration": plots.plot_calibration}[kind]
    kwargs = {} if kind == "calibration" else {"threshold": 0.5}
    path = fn(y, p, tmp_path / f"{kind}.png", **kwargs)
    img = _rgb(path)
    assert img.shape[1::-1] == _expected_size(kind)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 20  # not blank
    if kind != "calibration":  # the operating point is drawn in red
        red = (img[..., 0] > 200) & (img[..., 1] < 80) & (img[..., 2] < 80)
        assert red.sum() > 30


def test_roc_with_one_class_writes_a_note(tmp_path):
    img = _rgb(plots.plot_roc(np.zeros(10, int), np.linspace(0, 1, 10), tmp_path / "r.png", threshold=0.5))
    assert img.shape[1::-1] == _expected_size("roc")


def test_training_curves(tmp_path):
    history = pd.DataFrame({
        "epoch": [1, 2, 3, 4], "train_loss": [0.7, 0.5, 0.4, 0.3], "val_loss": [0.65, 0.55, 0.5, 0.52],
        "val_auc": [0.7, 0.8, 0.85, 0.84], "val_f1": [0.5, 0.6, 0.65, 0.66], "val_accuracy": [0.6, 0.7, 0.75, 0.76],
        "lr": [1e-3] * 4, "seconds": [3.0] * 4})
    img = _rgb(plots.plot_curves(history, tmp_path / "curves.png"))
    assert img.shape[1::-1] == _expected_size("curves")
    w = img.shape[1]
    blue = (np.abs(img[..., 0] - 31) < 20) & (np.abs(img[..., 1] - 119) < 20) & (np.abs(img[..., 2] - 180) < 20)
    orange = (img[..., 0] > 230) & (np.abs(img[..., 1] - 127) < 25) & (img[..., 2] < 40)
    # train (blue) and validation (orange) loss lines in the left panel; metric lines in the right one
    assert blue[:, : w // 2].sum() > 100 and orange[:, : w // 2].sum() > 100
    assert blue[:, w // 2:].sum() > 100


def test_training_curves_mark_the_kept_epoch_on_both_panels(tmp_path):
    history = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [0.7, 0.5, 0.4], "val_loss": [0.6, 0.5, 0.45],
                            "val_auc": [0.9, 0.8, 0.85]})
    plain = _rgb(plots.plot_curves(history, tmp_path / "plain.png"))
    kept = _rgb(plots.plot_curves(history, tmp_path / "kept.png", kept_epoch=1, kept_metric="val_auc"))
    w = plain.shape[1]
    # the dark grey (#444444) line and its legend entry appear in each panel, only when a kept epoch is given
    grey = [(np.abs(img - 0x44) < 12).all(axis=-1) for img in (plain, kept)]
    for half in (slice(0, w // 2), slice(w // 2, w)):
        assert grey[1][:, half].sum() > grey[0][:, half].sum() + 100


def test_training_curves_need_rows(tmp_path):
    with pytest.raises(MedclfError, match="epoch"):
        plots.plot_curves(pd.DataFrame({"epoch": []}), tmp_path / "c.png")
