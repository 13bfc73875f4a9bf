"""`medclf attack` and `medclf ood` on the tiny 3-class run: every class is attacked and scored."""

import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from medclf.data.cache import Cache
from medclf.data.dataset import CacheDataset
from medclf.models import load_checkpoint
from medclf.robust.attack_run import attack_run
from medclf.robust.ood_run import ood_run
from medclf.runs import open_run

pytestmark = pytest.mark.slow  # trains a model or starts a subprocess (make test-fast skips it)


@pytest.fixture
def run(tiny_multiclass_run, tmp_path):
    """A copy: attack and ood write into the run (ood re-saves best.pt)."""
    return shutil.copytree(tiny_multiclass_run, tmp_path / "run")


def test_attack_scores_all_three_classes_per_eps(run, tiny_multiclass_cache):
    entry = attack_run(run, method="pgd", eps=[32 / 255], steps=3, n_boot=20, n_examples=2, device="cpu",
                       progress=False)
    clean, attacked = entry["rows"]
    assert [r["eps_255"] for r in entry["rows"]] == [0.0, 32.0] and entry["n"] == 18 and entry["n_pos"] == 6
    predictor = open_run(run, "cpu").predictor()
    dataset = CacheDataset(Cache.open(tiny_multiclass_cache), split="test")
    probs = predictor.predict_dataset(dataset).probs
    assert clean["class_accuracy"] == pytest.approx(np.mean(probs.argmax(axis=1) == dataset.labels))
    assert clean["macro_roc_auc"] == pytest.approx(roc_auc_score(dataset.labels, probs, multi_class="ovr"), abs=1e-4)
    assert attacked["loss"] > clean["loss"] and attacked["class_accuracy"] <= clean["class_accuracy"]
    table = pd.read_csv(run / "robustness.csv")
    assert table["class_accuracy"].tolist() == pytest.approx([clean["class_accuracy"], attacked["class_accuracy"]])
    assert (run / "attack_examples_pgd.png").read_bytes().startswith(b"\x89PNG")


def test_ood_scores_noise_and_stores_a_three_class_detector(run):
    entry = ood_run(run, "noise", device="cpu", progress=False)
    assert (entry["n_in"], entry["n_out"]) == (18, 18) and entry["skipped"] == {}
    assert set(entry["scores"]) == {"msp", "energy", "mahalanobis"}
    assert all(0.0 <= s["auroc"] <= 1.0 and 0.0 <= s["fpr95"] <= 1.0 for s in entry["scores"].values())
    assert entry["scores"]["mahalanobis"]["auroc"] > 0.9  # noise is far from every class's features
    _, contract, _ = load_checkpoint(run / "best.pt")
    assert contract.num_classes == 3 and contract.ood["threshold"] == pytest.approx(entry["stored"]["threshold"])
    assert pd.read_csv(run / "ood.csv")["score"].tolist() == ["msp", "energy", "mahalanobis"]
