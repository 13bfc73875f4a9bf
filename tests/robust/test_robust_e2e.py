"""End to end on the tiny cache: adversarial and contrastive training, `medclf attack`, `medclf ood`, predict's
OOD columns and the report's robustness section."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from medclf.config import load_config
from medclf.data.cache import Cache
from medclf.engine.evaluate import evaluate_run
from medclf.engine.predict import predict_files
from medclf.engine.train import train
from medclf.models import load_checkpoint
from medclf.runs import open_run

pytestmark = pytest.mark.slow  # trains a model or starts a subprocess (make test-fast skips it)

TINY = ["model.name=resnet18", "model.input_size=32", "data.batch_size=8", "train.epochs=1", "train.lr=0.003",
        "train.warmup_epochs=0"]


@pytest.fixture(scope="module")
def ce_run(tiny_cache, scratch, request):
    run = scratch(request, "robust") / "ce"
    train(load_config(None, TINY), tiny_cache, run, progress=False)
    return run


@pytest.mark.parametrize("method", ["pgd", "advprop"])
def test_adversarial_training_end_to_end(tiny_cache, tmp_path, method):
    run = train(load_config(None, TINY + [f"train.adversarial={method}", "train.adv_steps=2"]), tiny_cache,
                tmp_path / method, progress=False)
    history = pd.read_csv(run / "history.csv")
    assert len(history) == 1 and np.isfinite(history["train_loss"]).all()
    model, contract, payload = load_checkpoint(run / "best.pt")  # strict load into the plain resnet18
    assert payload["config"]["train"]["adversarial"] == method and 0 < contract.threshold <= 1
    resume_state = torch.load(run / "last.pt", weights_only=True)["extra"]["train_state"]["model"]
    assert any(k.startswith("aux_bn.") for k in resume_state) == (method == "advprop")  # kept for --resume only


def test_supcon_pretraining_end_to_end(tiny_cache, tmp_path):
    run = train(load_config(None, TINY + ["train.contrastive=supcon", "train.contrastive_epochs=1"]), tiny_cache,
                tmp_path / "supcon", progress=False)
    stage = pd.read_csv(run / "contrastive_history.csv")
    assert stage["epoch"].tolist() == [1]
    # 72 views (2 x 36), SupCon at T=0.1: about log(71) ~ 4.3 for random embeddings, finite and positive
    assert 0 < stage["supcon_loss"].iloc[0] < 10
    assert len(pd.read_csv(run / "history.csv")) == 1
    load_checkpoint(run / "best.pt")


def test_attack_command_writes_metrics_per_eps(ce_run):
    r = CliRunner().invoke(_app(), ["attack", str(ce_run), "--method", "pgd", "--eps", "0.5/255,4/255",
                                    "--steps", "3", "--split", "test", "--n-boot", "0"])
    assert r.exit_code == 0, r.output
    entry = json.loads((ce_run / "robustness.json").read_text())["entries"][0]
    assert [row["eps_255"] for row in entry["rows"]] == [0.0, 0.5, 4.0] and entry["n"] == 12
    clean = evaluate_run(ce_run, split="test", n_boot=0, progress=False)
    for key in ("accuracy", "f1", "roc_auc"):  # eps 0 is the plain evaluation at the same threshold
        assert entry["rows"][0][key] == pytest.approx(clean[key], abs=1e-6)
    assert entry["rows"][2]["accuracy"] <= entry["rows"][0]["accuracy"]
    assert entry["rows"][2]["loss"] > entry["rows"][0]["loss"]
    r = CliRunner().invoke(_app(), ["attack", str(ce_run), "--eps", "1/255", "--steps", "2", "--split", "test",
                                    "--n-boot", "0", "--method", "fgsm"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(_app(), ["attack", str(ce_run), "--eps", "1/255", "--steps", "3", "--split", "test",
                                    "--n-boot", "0"])  # more radii for the same attack: merged by eps
    assert r.exit_code == 0, r.output
    table = pd.read_csv(ce_run / "robustness.csv")
    assert table[["method", "eps_255"]].values.tolist() == [["fgsm", 0.0], ["fgsm", 1.0], ["pgd", 0.0], ["pgd", 0.5],
                                                            ["pgd", 1.0], ["pgd", 4.0]]
    for name in ("robustness.png", "attack_examples_pgd.png"):
        assert (ce_run / name).stat().st_size > 1000


def test_attack_rejects_grey_level_eps_with_one_line(ce_run):
    r = subprocess.run([sys.executable, "-m", "medclf", "attack", str(ce_run), "--eps", "3"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == ("error: --eps: 3 is outside [0, 1]; eps is in unit grey range, "
                                "write grey levels as N/255")


def test_ood_command_stores_a_detector_that_predict_uses(ce_run, tiny_cache, tmp_path):
    r = CliRunner().invoke(_app(), ["ood", str(ce_run), "--ood", "noise", "--split", "test"])
    assert r.exit_code == 0, r.output
    entry = json.loads((ce_run / "ood.json").read_text())["entries"][-1]
    assert entry["name"] == "noise" and entry["n_in"] == 12 and entry["n_out"] == 16
    assert set(entry["scores"]) == {"msp", "energy", "mahalanobis"}
    assert all(0 <= m["auroc"] <= 1 and 0 <= m["fpr95"] <= 1 for m in entry["scores"].values())
    payload = torch.load(ce_run / "best.pt", weights_only=True)
    det = payload["contract"]["ood"]
    assert det["score"] == "mahalanobis" and len(det["means"]) == 2 and len(det["precision"]) == 512
    load_checkpoint(ce_run / "best.pt")  # still loads strictly

    from medclf.robust.ood_run import synthetic_ood_images

    predictor = open_run(ce_run).predictor()
    cache = Cache.open(tiny_cache)

    def ood_flags(images):
        return predictor.ood(predictor.predict_arrays(images))

    val_scores, val_flags = ood_flags(np.asarray(cache.images[cache.indices("val")]))
    # the threshold accepts 95% of the 12 validation images: the 'higher' quantile is their maximum
    assert det["threshold"] == pytest.approx(val_scores.max()) and not val_flags.any()
    noise_scores, _ = ood_flags(synthetic_ood_images("noise", 8, 32, seed=1))
    assert noise_scores.shape == (8,)

    Image.fromarray(np.asarray(cache.images[0])).save(tmp_path / "a.png")
    table = predict_files(ce_run, [tmp_path / "a.png"], progress=False)
    assert list(table.columns) == ["path", "prob", "predicted", "threshold", "ood", "ood_score", "error"]
    assert table["ood_score"].iloc[0] > 0 and table["ood"].iloc[0] == (table["ood_score"].iloc[0] > det["threshold"])


def test_report_has_a_robustness_section(ce_run):
    from medclf.report.html import build_report

    if not (ce_run / "robustness.json").exists():
        pytest.skip("needs the attack test's output")
    html = build_report(ce_run).read_text()
    assert 'id="robustness"' in html and "0 (clean)" in html and "decisions flipped" in html


def _app():
    from medclf.cli.main import app

    return app
