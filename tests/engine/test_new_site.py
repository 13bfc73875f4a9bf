"""Using a model at a new site (issue 21) end to end on tiny runs of every task type and an ensemble: the
temperature fitted when training ends and applied inside the inference graph (eager = ONNX), what `evaluate`
adds (ECE and Brier with intervals, the decision-curve table and plot, coverage, the operating-point check), and
`medclf recalibrate`: the new run keeps the weights, carries the re-fitted temperature/threshold/band, records its
images, and evaluating it on them is refused or leaves them out; predict, report and the predictions table carry
the band."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medclf.config import load_config
from medclf.data.cache import Cache, write_cache
from medclf.data.dataset import CacheDataset
from medclf.data.synthetic import write_synthetic_multilabel
from medclf.engine.evaluate import evaluate_run
from medclf.engine.predict import predict_files
from medclf.engine.train import train
from medclf.errors import ConfigError, DataError, MedclfError
from medclf.evaluation.calibration import expected_calibration_error
from medclf.evaluation.decision_curve import net_benefit
from medclf.io import read_json, write_json
from medclf.recalibrate import recalibrate
from medclf.runs import RunDir, open_run
from medclf.runs.recalibration import exclude_fitted, recalibration_record

pytestmark = pytest.mark.slow
TINY = ["model.name=resnet18", "model.input_size=32", "data.batch_size=8", "train.epochs=2", "train.lr=0.003",
        "train.warmup_epochs=0", "train.device=cpu", "eval.ood_detector=false", "eval.n_boot=0",
        "eval.threshold_min_class=2", "eval.conformal_alpha=0.2"]


@pytest.fixture(scope="module")
def binary_run(make_tiny_cache, tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy_bin")
    cache = make_tiny_cache(root / "cache", n=120)
    run = train(load_config(None, TINY), cache, root / "run", progress=False)
    metrics = evaluate_run(run, split="test", n_boot=50, device="cpu", progress=False)
    return cache, run, metrics


def test_training_fits_a_temperature_that_does_not_worsen_validation(binary_run):
    cache, run_dir, _ = binary_run
    run = open_run(run_dir)
    (t,) = run.contract.temperature
    assert 0.05 <= t <= 20
    val = CacheDataset(Cache.open(cache), split="val")
    tempered = run.predictor().predict_dataset(val).probs
    raw = run.predictor().__class__(run.model, _without_temperature(run.contract),
                                    image_size=run.image_size).predict_dataset(val).probs
    # what the fit promises: validation log-loss not raised; and here, as on PneumoniaMNIST (docs/new-site.md),
    # a lower validation ECE (T != 1: this tiny model's validation is not separable)
    assert t != 1.0
    assert _nll(tempered, val.labels) <= _nll(raw, val.labels) + 1e-6
    y = (val.labels == 1).astype(int)
    assert expected_calibration_error(y, tempered[:, 1]) < expected_calibration_error(y, raw[:, 1])
    assert np.array_equal(np.argsort(tempered[:, 1], kind="stable"), np.argsort(raw[:, 1], kind="stable"))


def test_onnx_equals_eager_with_the_temperature(binary_run):
    pytest.importorskip("onnxruntime")
    cache, run_dir, _ = binary_run
    run = open_run(run_dir)
    images = np.array(Cache.open(cache).images[:16])
    eager = run.predictor().predict_arrays(np.asarray(images)).probs
    onnx = run.predictor(engine="onnx").predict_arrays(np.asarray(images)).probs
    assert run.contract.temperature is not None
    assert np.abs(eager - onnx).max() < 1e-4


def test_evaluate_reports_calibration_decision_curve_and_coverage(binary_run):
    cache, run_dir, metrics = binary_run
    rd = RunDir(run_dir)
    cal = metrics["calibration"]["per_label"]["pneumonia"]
    assert cal["ece"] == pytest.approx(metrics["ece"])
    lo, hi = cal["ci"]["brier"]
    assert lo <= cal["brier"] <= hi
    table = pd.read_csv(rd.decision_curve("test"))
    assert rd.plot("decision_curve", "test").is_file()
    preds = pd.read_csv(rd.predictions("test"))
    y = (preds["label"] == 1).astype(int).to_numpy()
    hand = net_benefit(y, preds["prob"].to_numpy(), [0.3])["net_benefit"][0]
    assert table.loc[np.isclose(table["threshold"], 0.3), "net_benefit"].item() == pytest.approx(hand)
    band = metrics["conformal"]
    assert band["alpha"] == 0.2 and band["n"] == len(preds) and 1.0 <= band["mean_set_size"] <= 2.0
    assert band["coverage_ci"][0] <= band["coverage"] <= band["coverage_ci"][1]


def test_a_wrong_calibration_option_is_refused(make_tiny_cache, tmp_path):
    cache = make_tiny_cache(tmp_path / "cache", n=40)
    with pytest.raises(ConfigError, match="eval.calibrate: unknown 'platt'"):
        train(load_config(None, TINY + ["eval.calibrate=platt"]), cache, tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="eval.conformal_alpha"):
        train(load_config(None, TINY + ["eval.conformal_alpha=1.5"]), cache, tmp_path / "run2", progress=False)


def _without_temperature(contract):
    from dataclasses import replace

    return replace(contract, temperature=None)


def _nll(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())



@pytest.fixture(scope="module")
def runs(make_tiny_cache, tmp_path_factory):
    """(binary cache, binary run, external 'site' cache of another seed)."""
    root = tmp_path_factory.mktemp("recal")
    cache = make_tiny_cache(root / "cache", n=100)
    site = make_tiny_cache(root / "site", n=80, seed=7)
    run = train(load_config(None, TINY), cache, root / "run", progress=False)
    return cache, run, site


def test_recalibrated_run_keeps_weights_and_records_its_sample(runs, tmp_path):
    cache, run_dir, site = runs
    new = recalibrate(run_dir, site, tmp_path / "new", split="train", progress=False)
    old_run, new_run = open_run(run_dir), open_run(new)
    for a, b in zip(old_run.model.state_dict().values(), new_run.model.state_dict().values()):
        assert torch.equal(a, b)
    c = new_run.contract
    assert "site sample" in c.threshold_reason and c.conformal["fitted_on"] == "site sample"
    record = recalibration_record(new)
    train_ids = CacheDataset(Cache.open(site), split="train").ids.tolist()
    assert record["ids"] == train_ids and record["n"] == len(train_ids) and record["split"] == "train"
    assert record["after"]["log_loss"] <= record["before"]["log_loss"] + 1e-9  # fitted on the same images
    assert record["after"]["temperature"] == c.temperature
    # evaluated on those very images: refused; on the site's other images: allowed
    with pytest.raises(DataError, match="every one of these .* images was used to recalibrate"):
        evaluate_run(new, data=site, split="train", n_boot=0, device="cpu", progress=False)
    m = evaluate_run(new, data=site, split="test", n_boot=20, device="cpu", progress=False)
    assert m["n"] == len(CacheDataset(Cache.open(site), split="test"))
    with pytest.raises(MedclfError, match="already exists and is not empty"):
        recalibrate(run_dir, site, new, progress=False)


def test_evaluate_leaves_out_part_of_a_split_and_says_so(runs, tmp_path):
    cache, run_dir, _ = runs
    rd = RunDir(tmp_path / "fake")
    rd.path.mkdir()
    c = Cache.open(cache)
    test = CacheDataset(c, split="test")
    write_json(rd.recalibration_path, {"cache": str(c.path), "cache_hash": c.meta.get("content_hash"),
                                       "ids": test.ids[:5].tolist()})
    kept, note = exclude_fitted(rd, c, test)
    assert len(kept) == len(test) - 5 and kept.ids.tolist() == test.ids[5:].tolist()
    assert note.startswith("5 image(s) left out") and f"other {len(test) - 5}" in note
    other = CacheDataset(c, split="val")
    assert exclude_fitted(rd, c, other) == (other, None)


def test_predictions_table_and_report_carry_the_band(runs, tmp_path):
    cache, run_dir, site = runs
    new = recalibrate(run_dir, site, tmp_path / "new", split="val", progress=False)
    evaluate_run(new, data=site, split="test", n_boot=20, device="cpu", progress=False)
    rd = RunDir(new)
    (tag,) = [t for t in rd.prediction_tables() if t.startswith("test@")]
    table = pd.read_csv(rd.predictions(tag))
    sizes = table["prediction_set"].fillna("").map(lambda s: len(s.split("|")) if s else 0)
    assert table["refer"].tolist() == (sizes != 1).tolist()
    metrics = read_json(rd.metrics(tag))
    assert metrics["conformal"]["referred"] == pytest.approx(float((sizes != 1).mean()))
    out = subprocess.run([sys.executable, "-m", "medclf", "report", str(new)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    page = (rd / RunDir.REPORT).read_text()
    assert "Calibration, decision curve and refer band" in page and "Recalibrated from" in page
    assert "uncertain — refer" in page
    # predict's CSV carries the set and the flag too
    files = []
    for i, image in enumerate(np.asarray(Cache.open(site).images)[:6]):
        files.append(tmp_path / f"im{i}.png")
        Image.fromarray(image).save(files[-1])
    predicted = predict_files(new, files, progress=False)
    sizes = predicted["prediction_set"].fillna("").map(lambda s: len(s.split("|")) if s else 0)
    assert predicted["refer"].tolist() == (sizes != 1).tolist() and len(predicted) == 6
    # and the web service's answer (what the page's refer line shows), for the same files
    from fastapi.testclient import TestClient

    from medclf.serve.app import create_app
    from medclf.serve.predictor import ServeModel

    with TestClient(create_app(ServeModel.load(new, "cpu"))) as client:
        assert client.get("/api/model").json()["conformal"]["alpha"] == 0.2
        parts = [("files", (f.name, f.read_bytes(), "application/octet-stream")) for f in files[:2]]
        answers = client.post("/api/predict", files=parts, params={"heatmap": "false"}).json()["results"]
    for answer, (_, row) in zip(answers, predicted.iterrows()):
        assert answer["refer"]["flag"] == bool(row["refer"]) and answer["refer"]["alpha"] == 0.2
        assert answer["refer"]["set"] == ("" if pd.isna(row["prediction_set"]) else row["prediction_set"])

def test_cli_recalibrate(runs, tmp_path):
    cache, run_dir, site = runs
    out = subprocess.run([sys.executable, "-m", "medclf", "recalibrate", str(run_dir), "--data", str(site),
                          "--out", str(tmp_path / "cli"), "--split", "val"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "recalibrated:" in out.stdout and "fitted on" in out.stdout and "-> " in out.stdout
    bad = subprocess.run([sys.executable, "-m", "medclf", "recalibrate", str(run_dir), "--data", str(site),
                          "--out", str(tmp_path / "cli")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "not empty" in bad.stderr


@pytest.mark.parametrize("kind", ["multiclass", "multilabel"])
def test_other_tasks_recalibrate_per_their_rule(kind, tmp_path, request):
    if kind == "multiclass":
        cache = request.getfixturevalue("tiny_multiclass_cache")
    else:
        cache = write_synthetic_multilabel(tmp_path / "cache", n=160, size=32, seed=0, val=0.3, test=0.2)
    run_dir = train(load_config(None, TINY), cache, tmp_path / "run", progress=False)
    run = open_run(run_dir)
    k = run.contract.num_classes
    assert len(run.contract.temperature) == (k if kind == "multilabel" else 1)
    assert len(run.contract.conformal["qhat"]) == (k if kind == "multilabel" else 1)
    m = evaluate_run(run_dir, split="test", n_boot=20, device="cpu", progress=False)
    curves = pd.read_csv(RunDir(run_dir).decision_curve("test"))
    assert sorted(curves["label"].unique()) == sorted(run.contract.label_names)
    assert set(m["calibration"]["per_label"]) == set(run.contract.label_names)
    assert 0.0 <= m["conformal"]["coverage"] <= 1.0
    scored = run.contract.label_names if kind == "multilabel" else [run.contract.label_names[2]]
    assert list(m["operating_point"]["per_label"]) == scored  # the columns called at a threshold
    new = recalibrate(run_dir, cache, tmp_path / "new", split="val", progress=False)
    c = open_run(new).contract
    assert len(c.temperature) == len(run.contract.temperature)
    if kind == "multilabel":
        assert len(c.thresholds) == k and "site sample" in c.threshold_reason
    with pytest.raises(DataError, match="used to recalibrate"):
        evaluate_run(new, data=cache, split="val", n_boot=0, device="cpu", progress=False)


def test_an_ensemble_recalibrates(runs, tmp_path):
    from medclf.ensemble import train_ensemble

    cache, _, site = runs
    ens = train_ensemble(load_config(None, TINY + ["train.epochs=1"]), cache, tmp_path / "ens", members=2,
                         progress=False)
    spec = RunDir(ens).ensemble_spec()
    assert spec["temperature"] is not None and spec["conformal"]["alpha"] == 0.2
    new = recalibrate(ens, site, tmp_path / "new", split="train", progress=False)
    new_spec = RunDir(new).ensemble_spec()
    assert new_spec["threshold_split"] == "site sample" and new_spec["temperature"] is not None
    assert (RunDir(new).path / "members").is_dir()
    run = open_run(new)
    assert run.contract.temperature == new_spec["temperature"]
    images = np.array(Cache.open(site).images[:4])
    probs = run.predictor().predict_arrays(images).probs
    assert probs.shape == (4, 2) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


@pytest.fixture(scope="module")
def bright_site(runs, make_tiny_cache, tmp_path_factory):
    """Another site's images: the same kind of pictures from a brighter scanner (+60 grey levels), which makes
    the run call most negatives positive: its operating point does not travel, its ranking does."""
    root = tmp_path_factory.mktemp("bright")
    base = Cache.open(make_tiny_cache(root / "base", n=200, seed=11))
    images = np.clip(np.asarray(base.images).astype(np.int64) + 60, 0, 255).astype(np.uint8)
    meta = {k: base.meta[k] for k in ("source", "label_names", "positive_index", "label_mode")}
    return write_cache(root / "site", images, base.manifest, meta)


def balanced_accuracy(m: dict) -> float:
    return (m["recall"] + m["specificity"]) / 2


def test_the_shift_warning_fires_on_a_shifted_site_and_recalibrating_there_restores_balanced_accuracy(
        runs, bright_site, tmp_path):
    _, run_dir, _ = runs
    on_val = evaluate_run(run_dir, split="val", n_boot=0, device="cpu", progress=False)
    point = on_val["operating_point"]
    assert point["reference_split"] == "validation" and not point["moved"]
    ref, here = point["per_label"]["pneumonia"]["reference"], point["per_label"]["pneumonia"]["here"]
    assert ref == here  # validation is the reference itself
    assert not any("operating point moved" in w for w in on_val["warnings"])

    before = evaluate_run(run_dir, data=bright_site, split="test", n_boot=0, device="cpu", progress=False)
    assert before["operating_point"]["per_label"]["pneumonia"]["moved"] == ["specificity"]
    (warning,) = [w for w in before["warnings"] if w.startswith("operating point moved")]
    assert f"medclf recalibrate {run_dir} --data {bright_site} --out NEWRUN" in warning

    new = recalibrate(run_dir, bright_site, tmp_path / "new", split="train", progress=False)
    after = evaluate_run(new, data=bright_site, split="test", n_boot=0, device="cpu", progress=False)
    assert after["n"] == before["n"] == 40  # the site's test split: none of it was fitted on
    assert balanced_accuracy(after) >= balanced_accuracy(before) + 0.2
    assert after["operating_point"]["reference_split"] == "site sample" and not after["operating_point"]["moved"]

    out = subprocess.run([sys.executable, "-m", "medclf", "evaluate", str(run_dir), "--data", str(bright_site),
                          "--split", "test", "--n-boot", "0"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "operating point pneumonia: sens" in out.stdout and "MOVED: specificity" in out.stdout
    assert "warning: " in out.stderr and "medclf recalibrate" in out.stderr
