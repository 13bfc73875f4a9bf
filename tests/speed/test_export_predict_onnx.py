"""`predict --engine onnx` gives eager PyTorch's predictions, uses a current RUN/model.onnx and ignores a stale one."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medclf.data.cache import Cache
from medclf.engine.predict import predict_files
from medclf.errors import MedclfError
from medclf.models import create_model
from medclf.runs import Predictor, open_run
from medclf.runs.onnx import export_metadata, export_onnx

pytestmark = pytest.mark.slow  # trains a model or starts a subprocess (make test-fast skips it)


@pytest.fixture()
def pngs(tiny_cache, tmp_path):
    """The tiny cache's 12 test images as PNG files (what a user would hand to predict)."""
    cache = Cache.open(tiny_cache)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for row in cache.indices("test"):
        Image.fromarray(np.asarray(cache.images[row])).save(folder / f"img{row:03d}.png")
    return folder


def predict(run, pngs, engine):
    return predict_files(run, [pngs], batch_size=5, device="cpu", progress=False, engine=engine)


def test_onnx_engine_equals_eager(run_copy, pngs, tmp_path, monkeypatch):
    import tempfile

    from typer.testing import CliRunner

    from medclf.cli.main import app

    eager = predict(run_copy, pngs, "torch")
    out = tmp_path / "p.csv"
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    # no RUN/model.onnx yet: exported on the fly into a temp dir, the run directory is left alone
    result = CliRunner().invoke(app, ["predict", str(run_copy), str(pngs), "--engine", "onnx", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert not (run_copy / "model.onnx").exists()
    assert list(system_tmp.iterdir()) == []  # the on-the-fly export (45 MB) is gone once loaded
    onnx = pd.read_csv(out, keep_default_na=False)
    assert len(onnx) == 12 and (onnx["error"] == "").all()
    assert onnx["path"].tolist() == eager["path"].tolist()
    assert np.abs(onnx["prob"].to_numpy(float) - eager["prob"].to_numpy(float)).max() < 1e-5
    assert onnx["predicted"].tolist() == eager["predicted"].tolist()


def test_current_model_onnx_is_used_and_stale_one_ignored(run_copy, pngs):
    eager = predict(run_copy, pngs, "torch")
    # a current-looking RUN/model.onnx holding another network: predict must use it as it is
    run = open_run(run_copy, "cpu")
    other = create_model("resnet18", num_classes=2, input_size=32).eval()
    with torch.no_grad():
        other.model.fc.bias.copy_(torch.tensor([-20.0, 20.0]))  # near-certain "pneumonia" for every image
    module = Predictor(other, other.contract, detectors=[run.contract.ood]).module
    export_onnx(module, run.image_size, run_copy / "model.onnx", export_metadata(run, module))
    used = predict(run_copy, pngs, "onnx")
    assert (used["prob"] > 0.99).all()
    # the run's checkpoint changes (retrained): the file is stale and predict exports afresh
    best = run_copy / "best.pt"
    os.utime(best, ns=(best.stat().st_atime_ns, best.stat().st_mtime_ns + 10**9))
    fresh = predict(run_copy, pngs, "onnx")
    assert np.abs(fresh["prob"].to_numpy() - eager["prob"].to_numpy()).max() < 1e-5


def test_unknown_engine_is_an_error(run_copy, pngs):
    with pytest.raises(MedclfError, match="--engine: unknown 'tensorrt'"):
        predict(run_copy, pngs, "tensorrt")
