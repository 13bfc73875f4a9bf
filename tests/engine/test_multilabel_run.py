"""A multilabel run end to end on the synthetic three-shape set (one trained run shared by every test): it learns
each finding, its per-label thresholds come from validation, and evaluate, predict (eager and ONNX), the API,
the report and an ensemble all read the same per-label probabilities."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from medclf.config import load_config
from medclf.data.cache import Cache
from medclf.data.synthetic import write_synthetic_multilabel
from medclf.engine.evaluate import evaluate_run
from medclf.engine.train import train
from medclf.errors import ConfigError
from medclf.evaluation.thresholds import operating_threshold
from medclf.runs import open_run
from medclf.tasks import multi_hot

pytestmark = pytest.mark.slow  # trains a model or starts a subprocess (make test-fast skips it)

NAMES = ["disc", "square", "bar"]
TINY = ["model.name=resnet18", "model.input_size=48", "data.batch_size=16", "train.lr=0.003", "train.epochs=3",
        "train.warmup_epochs=0", "train.device=cpu", "eval.n_boot=0", "eval.ood_detector=false"]


@pytest.fixture(scope="module")
def multilabel_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("multilabel")
    # 3 epochs reach per-label AUC 0.99-1.0 on this set (measured while sizing the test)
    cache = write_synthetic_multilabel(root / "cache", n=400, size=48, seed=0)
    run = train(load_config(None, TINY), cache, root / "run", progress=False)
    metrics = evaluate_run(run, split="test", n_boot=100, device="cpu", progress=False)
    return cache, run, metrics


def test_every_finding_is_learned(multilabel_run):
    _, _, metrics = multilabel_run
    aucs = {name: metrics["per_label"][name]["roc_auc"] for name in NAMES}
    assert min(aucs.values()) >= 0.95, aucs
    assert metrics["task"] == "multilabel" and metrics["roc_auc"] == metrics["macro"]["roc_auc"]


def test_the_thresholds_are_chosen_per_label_on_validation(multilabel_run):
    cache, run, _ = multilabel_run
    opened = open_run(run)
    contract = opened.contract
    assert contract.task == "multilabel" and len(contract.thresholds) == 3
    val = Cache.open(cache)
    from medclf.data.dataset import CacheDataset

    dataset = CacheDataset(val, split="val")
    probs = opened.predictor().predict_dataset(dataset).probs
    y = multi_hot(dataset.labels, 3)
    for k in range(3):
        expected = operating_threshold(y[:, k], probs[:, k], min_class=10)
        assert contract.thresholds[k] == pytest.approx(expected.value)
    assert contract.threshold_source == "validation" and contract.threshold_reason.startswith("disc: f1 on ")


def test_the_metrics_equal_scikit_learn_on_the_predictions_table(multilabel_run):
    _, run, metrics = multilabel_run
    table = pd.read_csv(run / "predictions_test.csv")
    assert list(table.columns[:3]) == ["id", "label", "labels"]
    assert [c for c in table.columns if c.startswith("prob_")] == [f"prob_{n}" for n in NAMES]
    y = multi_hot(table["label"].to_numpy(), 3)
    probs = table[[f"prob_{n}" for n in NAMES]].to_numpy()
    saved = json.loads((run / "metrics_test.json").read_text())
    assert saved["macro"]["roc_auc"] == pytest.approx(roc_auc_score(y, probs, average="macro"))
    assert saved["micro"]["roc_auc"] == pytest.approx(roc_auc_score(y, probs, average="micro"))
    called = probs >= np.array(saved["thresholds"])
    assert (table[[f"pred_{n}" for n in NAMES]].to_numpy() == called).all()
    assert table["predicted"].iloc[0] == ("|".join(n for n, c in zip(NAMES, called[0]) if c) or "No Finding")
    assert (run / "roc_test.png").stat().st_size > 0 and (run / "pr_test.png").stat().st_size > 0


def test_predict_returns_every_label_with_the_api_and_onnx(multilabel_run, tmp_path):
    import medclf

    cache, run, _ = multilabel_run
    images = Cache.open(cache).images[:3]
    paths = []
    for i, image in enumerate(images):
        Image.fromarray(np.asarray(image)).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    table = medclf.predict(run, paths, progress=False)
    assert [f"prob_{n}" for n in NAMES] + [f"pred_{n}" for n in NAMES] + ["predicted"] == \
        [c for c in table.columns if c not in ("path", "error")]
    onnx = medclf.predict(run, paths, engine="onnx", progress=False)
    probs = [f"prob_{n}" for n in NAMES]
    assert np.allclose(onnx[probs].to_numpy(), table[probs].to_numpy(), atol=1e-4)
    assert onnx["predicted"].tolist() == table["predicted"].tolist()


def test_the_report_shows_the_per_label_table(multilabel_run):
    from medclf.report.html import build_report

    _, run, metrics = multilabel_run
    page = build_report(run).read_text(encoding="utf-8")
    auc = metrics["per_label"]["square"]["roc_auc"]
    assert "<h4>Per label</h4>" in page and f"{auc:.3f} [" in page and "3 labels; macro averages" in page


def test_an_ensemble_of_the_run_averages_sigmoids(multilabel_run):
    import torch

    from medclf.models.ensemble import Ensemble, ensemble_contract

    cache, run, _ = multilabel_run
    opened = open_run(run)
    contract = ensemble_contract(opened.contract, 0.5, "ensemble", {"thresholds": opened.contract.thresholds})
    twin = Ensemble([opened.model, opened.model], [opened.contract] * 2, contract)
    x = torch.randn(2, 3, 48, 48)
    member = torch.sigmoid(opened.model(x))
    assert torch.allclose(torch.sigmoid(twin(x)), member, atol=1e-5)  # its logits are the combined log-odds
    with pytest.raises(Exception, match="a multilabel ensemble combines with 'mean' or 'weighted'"):
        Ensemble([opened.model], [opened.contract], contract, combine="vote")


def test_single_label_options_refuse_a_multilabel_cache(multilabel_run, tmp_path):
    cache, _, _ = multilabel_run
    cfg = load_config(None, TINY + ["train.adversarial=fgsm"])
    with pytest.raises(ConfigError, match="train.adversarial=fgsm: defined for single-label tasks; .* is multilabel"):
        train(cfg, cache, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_an_attack_pushes_every_finding(multilabel_run):
    from medclf.robust.attack_run import attack_run

    _, run, _ = multilabel_run
    entry = attack_run(run, method="pgd", eps=[2 / 255], steps=2, max_images=24, n_boot=0, progress=False,
                       device="cpu")
    clean, attacked = entry["rows"]
    assert entry["thresholds"] == open_run(run).contract.thresholds and entry["n"] == 24
    assert clean["flip_rate"] == 0.0 and 0.0 <= attacked["flip_rate"] <= 1.0
    # PGD keeps, per image, the iterate of highest loss, the clean one included
    assert attacked["loss"] >= clean["loss"]
    table = pd.read_csv(run / "predictions_test.csv")
    assert 0.0 <= clean["accuracy"] <= 1.0 and clean["roc_auc"] is not None and len(table) >= 24


def test_explain_draws_the_likeliest_finding_by_default(multilabel_run):
    from medclf.explain.run import explain_targets

    cache, run, _ = multilabel_run
    opened = open_run(run)
    images = np.asarray(Cache.open(cache).images[:4])
    probs = opened.predictor().predict_arrays(images).probs
    maps, _, targets = explain_targets(opened, images, device="cpu")
    assert list(targets) == list(probs.argmax(axis=1))
    assert np.asarray(maps).shape == (4, 48, 48) and 0.0 <= np.asarray(maps).min() <= np.asarray(maps).max() <= 1.0
    chosen = explain_targets(opened, images, device="cpu", target="bar")[2]
    assert list(chosen) == [NAMES.index("bar")] * 4


def test_the_web_viewer_answers_every_finding(multilabel_run, tmp_path):
    import torch

    from medclf.serve.predictor import ServeModel
    from medclf.serve.uploads import Upload

    cache, run, _ = multilabel_run
    image = np.asarray(Cache.open(cache).images[0])
    Image.fromarray(image).save(tmp_path / "a.png")
    model = ServeModel(open_run(run, device="cpu"), torch.device("cpu"))
    upload = Upload(filename="a.png", path=tmp_path / "a.png", kind="png", size=(tmp_path / "a.png").stat().st_size)
    result = model.predict([upload], heatmap=True)[0]
    probs = result["probabilities"]
    thresholds = open_run(run).contract.thresholds
    assert list(probs) == NAMES and result["positive_label"] == max(probs, key=probs.get)
    assert result["called"] == [n for n, t in zip(NAMES, thresholds) if probs[n] >= t]
    assert result["label"] == ("|".join(result["called"]) or "No Finding") and result["heatmap"] is not None


def test_compare_reads_two_multilabel_runs_by_their_macro_auc(multilabel_run, tmp_path):
    import shutil

    from medclf.compare import compare_runs

    _, run, metrics = multilabel_run
    twin = tmp_path / "twin"
    shutil.copytree(run, twin)
    frame = compare_runs([run, twin], n_boot=50)
    assert frame["macro_auc"].tolist() == pytest.approx([metrics["macro"]["roc_auc"]] * 2)
    assert frame["d_macro_auc"].iloc[1] == pytest.approx(0.0) and frame["threshold"].isna().all()
    assert frame["recall"].iloc[0] == pytest.approx(metrics["macro"]["recall"])


def test_a_trained_multilabel_ensemble_chooses_a_threshold_per_finding(multilabel_run, tmp_path):
    from medclf.ensemble import train_ensemble

    cache, _, _ = multilabel_run
    cfg = load_config(None, TINY + ["train.epochs=1", "train.max_steps_per_epoch=2"])
    out = train_ensemble(cfg, cache, tmp_path / "ens", members=2, mode="partition", combine="weighted", progress=False)
    spec = json.loads((out / "ensemble.json").read_text())
    assert len(spec["thresholds"]) == 3 and len(spec["member_info"]) == 2
    assert [part.split(": ")[0] for part in spec["threshold_reason"].split("; ")] == NAMES
    assert open_run(out).contract.thresholds == spec["thresholds"]
    metrics = evaluate_run(out, split="test", n_boot=0, device="cpu", progress=False)
    table = pd.read_csv(out / "predictions_test.csv")
    assert "std" in table and (table["std"] >= 0).all() and metrics["thresholds"] == spec["thresholds"]


def test_int8_export_chooses_a_threshold_per_label_on_its_own_probabilities(multilabel_run, tmp_path):
    """Issue 23 on a multilabel run: the int8 file keeps K sigmoid probabilities, its comparison reads the macro
    AUC, and each label's threshold is chosen on the int8 validation probabilities, between two of them. (60
    validation images = 8 calibration batches: ORT 1.32 with CalibMaxIntermediateOutputs=8 failed on exactly this.)"""
    import shutil

    from medclf.data.dataset import CacheDataset
    from medclf.evaluation.thresholds import between_scores, choose_threshold
    from medclf.export_int8 import export_int8

    cache, run, _ = multilabel_run
    copy = shutil.copytree(run, tmp_path / "run")
    result = export_int8(copy, n_boot=0, max_auc_drop=1, max_changed=1)
    assert result.comparison["n"] == 60 and result.comparison["int8"]["roc_auc"] > 0.9
    int8 = open_run(copy).predictor(engine="onnx-int8")
    val = CacheDataset(Cache.open(cache), split="val")
    probs = int8.predict_dataset(val).probs
    assert probs.shape == (len(val), 3) and not np.allclose(probs.sum(axis=1), 1.0)  # sigmoids, not a softmax
    fp32 = open_run(copy).predictor().predict_dataset(val).probs
    assert len(val) == 60 and np.abs(probs - fp32).max() <= result.comparison["max_abs_diff"] + 1e-6
    y = multi_hot(val.labels, 3)
    thresholds = int8.contract.thresholds
    assert len(thresholds) == 3 and not np.isin(np.asarray(thresholds, dtype=np.float32), probs).any()
    for k in range(3):
        if int8.contract.threshold_source == "data":
            chosen = choose_threshold(y[:, k], probs[:, k], method=open_run(copy).config.eval.threshold)
            assert thresholds[k] == pytest.approx(between_scores(probs[:, k], chosen))
