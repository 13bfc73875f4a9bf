"""ONNX / TorchScript export of a trained run: probabilities match eager PyTorch, the graph's interface is as
documented (uint8 B x S x S images in, B x K probabilities out, dynamic batch), ensembles export too."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from medclf.cli.main import app
from medclf.data.cache import Cache
from medclf.export import export_run, load_torchscript
from medclf.runs import open_run
from medclf.runs.onnx import source_fingerprint

pytestmark = pytest.mark.slow  # trains a model or starts a subprocess (make test-fast skips it)

TOL = 1e-4


def eager_and_inputs(run_dir, cache_dir, n: int = 5):
    """uint8 test images of the tiny cache and the run's eager Predictor probabilities on them."""
    run = open_run(run_dir, "cpu")
    cache = Cache.open(cache_dir)
    images = np.ascontiguousarray(cache.images[cache.indices("test")[:n]])
    return images, run.predictor().predict_arrays(images).probs, run


def test_onnx_matches_eager_with_dynamic_batch(run_copy, tiny_cache):
    result = export_run(run_copy, "onnx")
    assert result.path == run_copy / "model.onnx"
    assert result.max_abs_diff < TOL
    assert (result.n_inputs, result.image_size) == (8, 32)  # 8 parity images from the run's cache
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    (inp,), outs = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type) == ("images", "tensor(uint8)")
    assert [o.name for o in outs][:2] == ["probs", "member_probs"]
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [32, 32]  # symbolic batch axis
    x, eager, run = eager_and_inputs(run_copy, tiny_cache)
    for batch in (1, 5):
        got = session.run(["probs"], {"images": x[:batch]})[0]
        assert got.shape == (batch, 2)
        np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-6)
        assert np.abs(got - eager[:batch]).max() < TOL
    meta = session.get_modelmeta().custom_metadata_map
    # the detector's arrays stay out
    assert json.loads(meta["medclf.contract"]) == {**run.contract.to_dict(), "ood": None}
    assert (meta["medclf.image_size"], meta["medclf.norm"]) == ("32", "robust")
    assert meta["medclf.source"] == source_fingerprint(run)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_torchscript_matches_eager_with_dynamic_batch(run_copy, tiny_cache, tmp_path):
    out = tmp_path / "exported.pt"
    result = export_run(run_copy, "torchscript", out=out)
    assert result.path == out and result.max_abs_diff < TOL
    module = load_torchscript(out)
    x, eager, run = eager_and_inputs(run_copy, tiny_cache)
    for batch in (1, 5):
        with torch.no_grad():
            got = module(torch.from_numpy(x[:batch]))[0].numpy()
        assert got.shape == (batch, 2)
        assert np.abs(got - eager[:batch]).max() < TOL
    extra = {"medclf.json": ""}
    torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(json.loads(extra["medclf.json"])["medclf.contract"]) == {**run.contract.to_dict(), "ood": None}


@pytest.mark.parametrize("combine", ["mean", "vote"])
def test_ensemble_exports_its_combined_probabilities(speed_run, tiny_cache, tmp_path, combine, ensemble_factory):
    ens = ensemble_factory(speed_run, tmp_path / "ens", combine=combine)
    x, eager, run = eager_and_inputs(ens, tiny_cache)
    assert type(run.model).__name__ == "Ensemble"
    members = run.predictor().predict_arrays(x).member_probs
    assert np.abs(members[0] - members[1]).max() > 1e-3  # the members really differ
    result = export_run(ens, "onnx")
    assert result.max_abs_diff < TOL
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    got = session.run(["probs"], {"images": x})[0]
    assert np.abs(got - eager).max() < TOL
    if combine == "mean":  # the combination is the members' mean, not one member's output
        assert np.abs(got - members.mean(axis=0)).max() < TOL


def test_cli_export_torchscript_prints_parity(run_copy, tmp_path):
    out = tmp_path / "m.pt"
    result = CliRunner().invoke(app, ["export", str(run_copy), "--format", "torchscript", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file()
    assert "max |prob difference| = " in result.stdout and "B dynamic" in result.stdout


def test_cli_export_unknown_format_is_a_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "medclf", "export", str(tmp_path), "--format", "tflite"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "error: --format: unknown 'tflite' (valid: onnx, torchscript)"
