"""`export --int8` and `--engine onnx-int8`: what is quantised, the comparison it writes, the refusal, and
predict / serve / evaluate answering like the fp32 engine within the |Δp| the export measured.

The run is trained on a cache that `prepare folder` made from PNG files, so predicting those files feeds the
engines exactly the images the export compared them on (a PNG of a synthetic cache image would be renormalised
on decoding, and an int8 model calibrated on one range is not checked on another)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import TensorProto, helper
from PIL import Image

from medclf.errors import MedclfError
from medclf.runs import RunDir, open_run
from medclf.runs.quantize import Quantized, kept_float

TINY = ["model.name=resnet18", "model.input_size=32", "data.batch_size=8", "train.epochs=2", "train.device=cpu",
        "train.warmup_epochs=0", "eval.ood_detector=false"]


@pytest.fixture(scope="module")
def png_run(tmp_path_factory):
    """(int8-exported run, folder of its 80 PNG files, val file names): resnet18 at 32 px on a PNG folder."""
    from medclf.config import load_config
    from medclf.data.prepare import prepare_folder
    from medclf.engine.train import train
    from medclf.export_int8 import export_int8

    root = tmp_path_factory.mktemp("int8")
    rng = np.random.default_rng(3)
    labels = (np.arange(80) % 3 == 0).astype(int)  # a third positive: a bright square on grey noise
    images = rng.integers(40, 90, size=(80, 32, 32)).astype(np.uint8)
    for i in np.flatnonzero(labels):
        x, y = rng.integers(2, 22, size=2)
        images[i, y:y + 8, x:x + 8] = 220
    folder = root / "png"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"im{i:03d}.png")
    pd.DataFrame({"path": [f"im{i:03d}.png" for i in range(80)],
                  "label": np.where(labels == 1, "pneumonia", "normal")}).to_csv(root / "labels.csv", index=False)
    cache = prepare_folder(folder, root / "labels.csv", root / "cache", size=32, val=0.25, test=0.0, workers=1,
                           positive="pneumonia", progress=False)
    run = train(load_config(None, TINY), cache, root / "run", progress=False)
    export_int8(run, n_boot=200)
    from medclf.data.cache import Cache

    manifest = Cache.open(cache).manifest
    val_files = [folder / i for i in manifest.loc[manifest["split"] == "val", "id"]]
    return run, folder, val_files


def comparison(run) -> dict:
    return json.loads((RunDir(run).int8_report_path).read_text())


@pytest.mark.slow
def test_only_the_model_ops_are_quantised_and_the_comparison_is_recorded(png_run):
    run, _, val_files = png_run
    rd = RunDir(run)
    model = onnx.load(str(rd.int8_path))
    ops = [n.op_type for n in model.graph.node]
    c = comparison(run)
    assert c["file"] == RunDir.ONNX_INT8 and c["split"] == "val" and c["n"] == len(val_files) == 20
    assert c["quantized_nodes"] > 20 and c["kept_float"] == []
    # every convolution and the head read int8 weights through DequantizeLinear (QDQ, per channel: axis 0)
    dq_out = {o: n for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(convs) == ops.count("Conv") + ops.count("Gemm") >= 21
    assert all(n.input[1] in dq_out for n in convs)
    # the pixels enter and the probabilities leave in float: no quantise step on the input, nor after softmax
    first = [n for n in model.graph.node if "images" in n.input]
    assert [n.op_type for n in first] == ["Unsqueeze"]
    softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
    assert softmax and not any(n.input[0] in dq_out for n in softmax)
    # the file's contract carries the int8 threshold, chosen on validation and said so
    contract = json.loads({p.key: p.value for p in model.metadata_props}["medclf.contract"])
    assert contract["threshold"] == c["threshold"] and contract["threshold_reason"].startswith("int8: ")
    assert 0.0 <= c["mean_abs_diff"] <= c["max_abs_diff"] < 0.2 and c["changed_share"] <= 0.01
    assert c["fp32"]["roc_auc"] - c["int8"]["roc_auc"] == pytest.approx(c["auc_drop"])


@pytest.mark.slow
def test_the_comparison_equals_the_engines_on_the_same_images(png_run):
    """Recomputed by hand through the Python API: |Δp| and changed decisions on the validation images."""
    from medclf.data.cache import Cache
    from medclf.evaluation.metrics import binary_metrics

    run, _, _ = png_run
    c = comparison(run)
    r = open_run(run)
    cache = Cache.open(r.dir.cache_path())
    rows = cache.indices("val")
    images, y = np.asarray(cache.images[rows]), cache.manifest["label"].to_numpy()[rows]
    fp32, int8 = r.predictor(engine="onnx"), r.predictor(engine="onnx-int8")
    p32, p8 = fp32.predict_arrays(images).probs, int8.predict_arrays(images).probs
    assert np.abs(p32 - p8).max() == pytest.approx(c["max_abs_diff"], abs=1e-6)
    assert np.abs(p32 - p8).mean() == pytest.approx(c["mean_abs_diff"], abs=1e-6)
    changed = np.asarray(fp32.decisions(p32)) != np.asarray(fp32.decisions(p8))
    assert int(changed.sum()) == c["changed_decisions"]
    assert binary_metrics(y, p8[:, 1], 0.5, n_boot=0)["roc_auc"] == pytest.approx(c["int8"]["roc_auc"])
    assert int8.threshold == c["threshold"] and int8.engine == "onnx-int8"


@pytest.mark.slow
def test_predict_int8_answers_like_fp32_within_the_measured_difference(png_run, tmp_path):
    run, _, val_files = png_run
    c = comparison(run)
    answers = {}
    for engine in ("onnx", "onnx-int8"):
        out = tmp_path / f"{engine}.csv"
        proc = subprocess.run([sys.executable, "-m", "medclf", "predict", str(run), *map(str, val_files),
                               "--engine", engine, "--out", str(out)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        answers[engine] = pd.read_csv(out, keep_default_na=False)
    fp32, int8 = answers["onnx"], answers["onnx-int8"]
    assert (int8["error"] == "").all() and int8["path"].tolist() == fp32["path"].tolist()
    assert np.abs(int8["prob"] - fp32["prob"]).max() <= c["max_abs_diff"] + 1e-5
    assert (int8["threshold"] == c["threshold"]).all()
    assert (int8["predicted"] != fp32["predicted"]).mean() <= c["changed_share"] + 1e-9


@pytest.mark.slow
def test_serve_int8_answers_like_fp32_within_the_measured_difference(png_run):
    from fastapi.testclient import TestClient

    from medclf.serve.app import create_app
    from medclf.serve.predictor import ServeModel

    run, _, val_files = png_run
    c = comparison(run)
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in val_files[:4]]
    results = {}
    for engine in ("onnx", "onnx-int8"):
        with TestClient(create_app(ServeModel.load(run, "cpu", engine=engine))) as client:
            assert client.get("/api/model").json()["engine"] == engine
            results[engine] = client.post("/api/predict", files=files, params={"heatmap": "false"}).json()["results"]
    for a, b in zip(results["onnx"], results["onnx-int8"]):
        assert abs(a["probability"] - b["probability"]) <= c["max_abs_diff"] + 1e-5
        assert b["threshold"] == c["threshold"]


@pytest.mark.slow
def test_evaluate_int8_uses_its_own_threshold(png_run, tmp_path):
    from medclf.engine.evaluate import evaluate_run

    run = shutil.copytree(png_run[0], tmp_path / "run")
    m = evaluate_run(run, split="val", n_boot=0, device="cpu", progress=False, engine="onnx-int8")
    c = comparison(run)
    assert m["threshold"] == c["threshold"] and m["n"] == c["n"]
    assert m["roc_auc"] == pytest.approx(c["int8"]["roc_auc"])


@pytest.mark.slow
def test_too_strict_max_auc_drop_refuses_with_the_numbers(png_run, tmp_path):
    run = shutil.copytree(png_run[0], tmp_path / "run")
    RunDir(run).int8_path.unlink()
    RunDir(run).int8_report_path.unlink()
    proc = subprocess.run([sys.executable, "-m", "medclf", "export", str(run), "--format", "onnx", "--int8",
                           "--max-auc-drop", "-1"], capture_output=True, text=True)
    assert proc.returncode != 0
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {RunDir(run).int8_path}: not written: int8 loses too much accuracy on val")
    assert "AUC fp32" in line and "|Δp| max" in line and "allowed: AUC drop <= -1" in line
    assert not RunDir(run).int8_path.exists() and not RunDir(run).int8_report_path.exists()


@pytest.mark.slow
def test_int8_engine_needs_a_current_int8_file(png_run, tmp_path):
    run = shutil.copytree(png_run[0], tmp_path / "run")
    best = RunDir(run).best
    best.write_bytes(best.read_bytes())  # a retrained run: same name, newer file
    with pytest.raises(MedclfError, match="exported from other checkpoints"):
        open_run(run).predictor(engine="onnx-int8")
    RunDir(run).int8_path.unlink()
    with pytest.raises(MedclfError, match=r"no int8 model in this run; run `medclf export .* --int8`"):
        open_run(run).predictor(engine="onnx-int8")


@pytest.mark.slow
def test_multiclass_run_gets_three_int8_probabilities(tiny_multiclass_run, tmp_path):
    from medclf.export_int8 import export_int8

    multi = export_int8(shutil.copytree(tiny_multiclass_run, tmp_path / "multi"), n_boot=0, max_auc_drop=1,
                        max_changed=1)
    assert multi.comparison["n"] == 18 and multi.comparison["int8"]["roc_auc"] is not None
    probs = open_run(tmp_path / "multi").predictor(engine="onnx-int8").predict_arrays(
        np.zeros((2, 32, 32), np.uint8)).probs
    assert probs.shape == (2, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)


@pytest.mark.slow
def test_ensemble_each_member_quantised(png_run, ensemble_factory, tmp_path):
    from medclf.export_int8 import export_int8

    ens_dir = ensemble_factory(png_run[0], tmp_path / "ens")
    ens = export_int8(ens_dir, n_boot=0, max_auc_drop=1, max_changed=1)
    assert ens.comparison["quantized_nodes"] == 2 * comparison(png_run[0])["quantized_nodes"]
    pred = open_run(ens_dir).predictor(engine="onnx-int8").predict_arrays(np.zeros((3, 32, 32), np.uint8))
    assert pred.member_probs.shape == (2, 3, 2)


def _graph(op_inputs_dequantized: bool) -> onnx.ModelProto:
    """x -> MatMul(x, W) with W either a plain initializer or DequantizeLinear(int8 W)."""
    w = helper.make_tensor("W", TensorProto.FLOAT, [2, 2], [1.0, 0.0, 0.0, 1.0])
    wq = helper.make_tensor("Wq", TensorProto.INT8, [2, 2], [1, 0, 0, 1])
    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [1.0])
    nodes = [helper.make_node("DequantizeLinear", ["Wq", "s"], ["Wd"], name="dq")] if op_inputs_dequantized else []
    nodes.append(helper.make_node("MatMul", ["x", "Wd" if op_inputs_dequantized else "W"], ["y"], name="mm"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [w, wq, scale])
    return helper.make_model(graph)


def test_an_op_left_in_float_is_named_in_one_line():
    assert kept_float(_graph(True), {"mm"}) == []
    assert kept_float(_graph(False), {"mm"}) == [("MatMul", "mm")]
    assert kept_float(_graph(False), set()) == []  # outside the model's scope: float by design, not a fallback
    note = Quantized(None, 1, [("MatMul", "mm"), ("Conv", "c1")]).fallback_note()
    assert note == "int8: 2 op(s) without an int8 kernel stay float32: Conv, MatMul (mm, c1)"
    assert Quantized(None, 1).fallback_note() is None


@pytest.mark.slow
def test_report_shows_the_comparison(png_run, tmp_path):
    from medclf.report.html import build_report

    run = shutil.copytree(png_run[0], tmp_path / "run")
    c = comparison(run)
    html = build_report(run).read_text(encoding="utf-8")
    assert "int8 deployment" in html and "decisions changed at the run&#x27;s threshold" in html
    assert f"{c['changed_decisions']} ({c['changed_share']:.2%})" in html
    assert f"calibrated on {c['n_calibration']} images of val" in html
