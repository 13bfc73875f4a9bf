"""Training ensembles on the tiny cache: member data, threshold, resume, and evaluate/predict/report on the run."""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from medclf.data.cache import Cache
from medclf.data.dataset import CacheDataset
from medclf.data.splits import partition_indices
from medclf.engine.evaluate import evaluate_run
from medclf.engine.predict import predict_files
from medclf.ensemble import plan_members, train_ensemble
from medclf.errors import MedclfError
from medclf.evaluation.thresholds import between_scores, choose_threshold
from medclf.report.html import build_report
from medclf.runs import Predictor, open_run
from medclf.tasks import make_task

CPU = torch.device("cpu")


def _member_probs(run_dir, split):
    """Each member's positive-class probabilities on a split of its ensemble's cache, loaded on its own and
    without its own temperature (an ensemble combines its members' raw probabilities), as the ensemble's
    temperature makes them (`_tempered`)."""
    cache = Cache.open(json.loads((run_dir / "data_summary.json").read_text())["cache"])
    data = CacheDataset(cache, split=split)
    probs = [Predictor(r.model, replace(r.contract, temperature=None)).predict_dataset(data).probs
             for r in (open_run(run_dir / "members" / str(i), CPU) for i in range(3))]
    return data, np.stack(probs)


def _tempered(run_dir, probs):
    """`... x 2` probabilities with the ensemble's temperature (ensemble.json) applied, positive column."""
    t = json.loads((run_dir / "ensemble.json").read_text())["temperature"]
    assert t is not None and t[0] > 0  # eval.calibrate=temperature is the default
    task = make_task("binary", ["normal", "pneumonia"])
    return task.tempered(torch.from_numpy(probs), torch.tensor(t)).numpy()[..., 1]


@pytest.mark.slow
def test_partition_members_see_disjoint_patients(partition_run, tiny_cache):
    cache = Cache.open(tiny_cache)
    patients = cache.manifest["patient_id"].to_numpy()
    rows = [np.load(partition_run / "members" / str(i) / "train_rows.npy") for i in range(3)]
    sets = [set(patients[r]) for r in rows]
    assert [len(r) for r in rows] == [12, 12, 12]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert set().union(*sets) == set(patients[cache.indices("train")])
    train = cache.indices("train")
    expected = partition_indices(cache.labels("train"), patients[train], 3, seed=0)
    assert [r.tolist() for r in rows] == [train[p].tolist() for p in expected]
    for i in range(3):  # each member trained on its own rows, 4 positives of 12 (stratified)
        cfg = yaml.safe_load((partition_run / "members" / str(i) / "config.yaml").read_text())
        assert "train_subset" not in cfg["data"]  # the rows are an argument of train(), not a config key
        assert cfg["train"]["seed"] == i
        assert int((cache.manifest["label"].to_numpy()[rows[i]] == 1).sum()) == 4


@pytest.mark.slow
def test_ensemble_threshold_is_chosen_on_val_with_combined_probabilities(partition_run):
    spec = json.loads((partition_run / "ensemble.json").read_text())
    assert spec["members"] == ["members/0", "members/1", "members/2"]
    assert spec["combine"] == "mean" and spec["weights"] == pytest.approx([1 / 3] * 3)
    val, probs = _member_probs(partition_run, "val")
    combined = _tempered(partition_run, probs.mean(axis=0))  # the mean, then the ensemble's own temperature
    expected = between_scores(combined, choose_threshold((val.labels == 1).astype(int), combined, method="f1"))
    assert spec["threshold"] == pytest.approx(expected, abs=1e-6)
    assert (spec["threshold_source"], spec["threshold_reason"]) == ("validation", "f1 on 12 validation images "
                                                                    "(4 positives)")
    contract = open_run(partition_run, CPU).contract
    assert contract.threshold == pytest.approx(spec["threshold"])
    assert (contract.threshold_reason, contract.threshold_warnings) == (spec["threshold_reason"],
                                                                        spec["threshold_warnings"])


@pytest.mark.slow
def test_a_weighted_ensembles_threshold_is_chosen_on_the_probabilities_it_is_applied_to(partition_run, tmp_path,
                                                                                         tiny_cache, tiny_cfg):
    """Reweighting the members (no retraining) with flip TTA: the threshold in ensemble.json is the one the opened
    run's own Predictor probabilities on val give, to the last bit (not one chosen on a numpy re-combination)."""
    from medclf.ensemble import finalize_ensemble

    run = tmp_path / "weighted"
    shutil.copytree(partition_run, run)
    cfg = tiny_cfg("eval.tta_flip=true")
    cache = Cache.open(tiny_cache)
    spec = finalize_ensemble(run, cache, cfg, "partition", "weighted",
                             plan_members(cache, "partition", 3, ["resnet18"], cfg.train.seed))
    aucs = [m["val_auc"] for m in spec["member_info"]]
    assert spec["weights"] == pytest.approx([a / sum(aucs) for a in aucs])
    val = CacheDataset(cache, split="val")
    probs = open_run(run, CPU).predictor(tta_flip=True).predict_dataset(val, batch_size=cfg.eval.batch_size).probs
    chosen = choose_threshold((val.labels == 1).astype(int), probs[:, 1], method="f1")
    assert spec["threshold"] == between_scores(probs[:, 1], chosen)  # to the last bit


@pytest.mark.slow
def test_evaluate_writes_mean_and_member_std(partition_run, tmp_path):
    run = tmp_path / "ens"
    shutil.copytree(partition_run, run)
    metrics = evaluate_run(run, split="test", n_boot=0, progress=False)
    table = pd.read_csv(run / "predictions_test.csv")
    assert list(table.columns) == ["id", "label", "prob", "predicted", "threshold", "split", "model", "std", "ood",
                                   "ood_score"]
    test, probs = _member_probs(run, "test")
    assert table["id"].tolist() == list(test.ids)
    np.testing.assert_allclose(table["prob"], _tempered(run, probs.mean(axis=0)), atol=1e-6)
    np.testing.assert_allclose(table["std"], _tempered(run, probs).std(axis=0), atol=1e-6)
    assert metrics["threshold"] == pytest.approx(json.loads((run / "ensemble.json").read_text())["threshold"])
    assert metrics["n"] == 12

    # predict on files: the ensemble's probability is the mean of its members' on the same files
    cache = Cache.open(json.loads((run / "data_summary.json").read_text())["cache"])
    files = []
    for row in cache.indices("test")[:4]:
        files.append(tmp_path / f"{cache.manifest['id'].iat[row]}.png")
        Image.fromarray(np.asarray(cache.images[row])).save(files[-1])
    out = predict_files(run, files, progress=False)
    members = [open_run(run / "members" / str(i), CPU) for i in range(3)]
    singles = np.stack([Predictor(r.model, replace(r.contract, temperature=None)).predict_files(files)[["prob"]]
                        .to_numpy() for r in members])  # M x 4 x 1: the positive column of each member
    mean = singles.mean(axis=0)[:, 0]
    np.testing.assert_allclose(out["prob"], _tempered(run, np.stack([1 - mean, mean], axis=1)), atol=1e-6)
    threshold = open_run(run, CPU).contract.threshold
    assert out["predicted"].tolist() == ["pneumonia" if p >= threshold else "normal" for p in out["prob"]]

    page = build_report(run).read_text(encoding="utf-8")
    assert '<section id="ensemble"><h2>Ensemble</h2>' in page
    assert "3 members (partition mode)" in page and "Member disagreement" in page


@pytest.mark.slow
def test_rerun_keeps_finished_members_and_resumes_the_rest(partition_run, tmp_path, tiny_cache, tiny_cfg):
    run = tmp_path / "ens"
    shutil.copytree(partition_run, run)
    m0, m1 = run / "members" / "0", run / "members" / "1"
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (m0 / "best.pt", m0 / "history.csv")}
    history1 = (m1 / "history.csv").read_bytes()
    (m1 / "member.json").unlink()  # member 1 crashed after its last epoch, before it was marked finished
    shutil.rmtree(run / "members" / "2")  # member 2 never started
    train_ensemble(tiny_cfg(), tiny_cache, run, members=3, mode="partition", combine="weighted", progress=False)
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in before} == before
    assert (m1 / "history.csv").read_bytes() == history1  # resumed from last.pt: no epoch retrained
    assert (m1 / "member.json").is_file() and (run / "members" / "2" / "best.pt").is_file()
    assert len(pd.read_csv(run / "members" / "2" / "history.csv")) == 1
    spec = json.loads((run / "ensemble.json").read_text())
    aucs = [m["val_auc"] for m in spec["member_info"]]
    assert spec["combine"] == "weighted" and spec["weights"] == pytest.approx([a / sum(aucs) for a in aucs])
    with pytest.raises(MedclfError, match="planned with other settings \\(members differ\\)"):
        train_ensemble(tiny_cfg(), tiny_cache, run, members=2, mode="partition", progress=False)


@pytest.mark.slow
def test_kfold_members_validate_on_their_held_out_fold(tiny_cache, tmp_path, tiny_cfg):
    run = train_ensemble(tiny_cfg(), tiny_cache, tmp_path / "kfold", members=2, mode="kfold", progress=False)
    cache = Cache.open(tiny_cache)
    rows = [np.load(run / "members" / str(i) / "train_rows.npy") for i in range(2)]
    assert sorted(np.concatenate(rows).tolist()) == cache.indices("train").tolist()  # folds: complementary halves
    for i in range(2):
        view = Cache.open(run / "members" / str(i) / "cache")
        assert os.path.islink(view.path / "images.npy")
        held_out = view.indices("val")
        assert held_out.tolist() == rows[1 - i].tolist()  # validated on exactly the rows it did not train on
        assert not set(rows[i]) & set(cache.indices("val"))
        member = open_run(run / "members" / str(i), CPU)
        probs = Predictor(member.model, member.contract).predict_dataset(CacheDataset(view, split="val")).probs[:, 1]
        expected = between_scores(probs, choose_threshold((cache.manifest["label"].to_numpy()[held_out] == 1)
                                                          .astype(int), probs))
        assert member.contract.threshold == pytest.approx(expected, abs=1e-6)
    info = json.loads((run / "ensemble.json").read_text())["member_info"]
    assert [m["validated_on"] for m in info] == ["held-out fold (18 images)"] * 2


def test_bootstrap_plan_resamples_patients_per_class(tiny_cache):
    cache = Cache.open(tiny_cache)
    train = cache.indices("train")
    plans = plan_members(cache, "bootstrap", 3, ["resnet18"], seed=0)
    labels = cache.manifest["label"].to_numpy()
    for plan in plans:
        assert set(plan.train_rows) <= set(train) and len(plan.train_rows) == 36
        assert len(set(plan.train_rows)) < 36  # drawn with replacement
        assert int((labels[plan.train_rows] == 1).sum()) == 12  # 12 of 36 positive, as in the split
    assert plans[0].train_rows.tolist() != plans[1].train_rows.tolist()
    models = plan_members(cache, "models", 2, ["resnet18", "efficientnet_b0"], seed=0)
    assert [(p.model, p.seed, len(p.train_rows)) for p in models] == [("resnet18", 0, 36), ("efficientnet_b0", 1, 36)]


@pytest.mark.slow
@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "stacking"}, "unknown ensemble mode 'stacking'"),
    ({"mode": "models"}, "--mode models needs --models"),
    ({"mode": "models", "models": ["resnet18", "resnet99"]}, "unknown model\\(s\\) resnet99"),
    ({"mode": "models", "models": ["resnet18"], "members": 3}, "--members 3 but 1 models listed"),
    ({"members": 1}, "--members must be at least 2"),
])
def test_bad_requests_fail_before_training(tiny_cache, tmp_path, tiny_cfg, kwargs, message):
    with pytest.raises(MedclfError, match=message):
        train_ensemble(tiny_cfg(), tiny_cache, tmp_path / "ens", progress=False, **kwargs)
    assert not (tmp_path / "ens").exists()


@pytest.mark.slow
def test_cli_reports_a_bad_mode_on_one_line(tiny_cache, tmp_path):
    r = subprocess.run([sys.executable, "-m", "medclf", "ensemble", "--data", str(tiny_cache), "--out",
                        str(tmp_path / "e"), "--mode", "nope"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr == "error: unknown ensemble mode 'nope'; choose one of partition, kfold, bootstrap, models\n"


@pytest.mark.slow
def test_the_ensemble_and_each_member_log_to_tensorboard(partition_run, tensorboard_scalars):
    """The ensemble's own log holds its threshold and each member's validation AUC, as ensemble.json says; each
    member's log holds its epochs, as its history.csv says."""
    import json

    import pandas as pd

    spec = json.loads((partition_run / "ensemble.json").read_text())
    scalars = tensorboard_scalars(partition_run / "tensorboard")
    assert scalars["threshold"][0][1] == pytest.approx(spec["threshold"], rel=1e-6)
    for member in spec["member_info"]:
        assert scalars[f"member_{member['index']}/val_auc"][0][1] == pytest.approx(member["val_auc"], rel=1e-6)
        history = pd.read_csv(partition_run / member["dir"] / "history.csv")
        logged = sorted(tensorboard_scalars(partition_run / member["dir"] / "tensorboard")["val_loss"])
        assert [s for s, _ in logged] == history["epoch"].tolist()
        np.testing.assert_allclose([v for _, v in logged], history["val_loss"], rtol=1e-6)
