"""`medclf evaluate --by` logs each group's AUC, n and positives, and the forest plot, to the run's TensorBoard."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from medclf.cli.main import app
from medclf.runs import RunDir
from medclf.tracking import metric_name


@pytest.fixture(scope="module")
def run(tiny_cache, scratch, request, train_tiny):
    out = scratch(request, "subgroups_tb") / "run"
    return train_tiny(tiny_cache, out)


def event_data(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars, images = {}, set()
    for events in sorted(log_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"images": 0, "scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = [e.value for e in acc.Scalars(tag)]
        images |= set(acc.Tags()["images"])
    return scalars, images


@pytest.mark.slow
def test_group_auc_and_counts_reach_tensorboard(run):
    result = CliRunner().invoke(app, ["evaluate", str(run), "--split", "train", "--by", "view,sex", "--min-group",
                                      "3", "--n-boot", "50"])
    assert result.exit_code == 0, result.output
    scalars, images = event_data(RunDir(run).tensorboard_dir)
    sub = json.loads((run / "subgroups_train.json").read_text())
    measured = 0
    for column, rows in sub["columns"].items():
        for row in rows:
            key = f"train/subgroups/{column}/{metric_name(row['group'])}"
            assert scalars[f"{key}/n"] == [row["n"]] and scalars[f"{key}/n_pos"] == [row["n_pos"]]
            if row["metrics"] is None:  # too small: counts only
                assert f"{key}/roc_auc" not in scalars
                continue
            measured += 1
            assert scalars[f"{key}/roc_auc"] == [pytest.approx(row["metrics"]["roc_auc"], rel=1e-6)]
            lo, hi = row["metrics"]["ci"]["roc_auc"]
            assert scalars[f"{key}/roc_auc_ci_low"] == [pytest.approx(lo, rel=1e-6)]
            assert scalars[f"{key}/roc_auc_ci_high"] == [pytest.approx(hi, rel=1e-6)]
    # 36 train images: PA and AP 18 each (6 positive) and one 'unknown' sex group of 36 (12 positive)
    assert measured == 3 and scalars["train/subgroups/view/PA/n"] == [18]
    assert scalars["train/subgroups/sex/unknown/n_pos"] == [12]
    assert "train/subgroups" in images and "train/roc" in images


def test_metric_names_are_mlflow_safe():
    assert [metric_name(g) for g in ("[40, 60)", "[80, 200)", "unknown", "AP", "≥80", "a|b")] == [
        "40-60", "80-200", "unknown", "AP", "_80", "a_b"]


@pytest.mark.slow
def test_group_auc_and_files_reach_mlflow(tiny_cache, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    from medclf.config import load_config
    from medclf.engine.evaluate import evaluate_run
    from medclf.engine.train import train

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(None, ["model.name=resnet18", "model.input_size=32", "data.batch_size=8", "train.epochs=1",
                             "train.max_steps_per_epoch=2", "eval.ood_detector=false", "train.device=cpu",
                             "track.tensorboard=false", "track.mlflow=true", f"track.mlflow_uri={uri}",
                             "track.experiment=subgroups"])
    run = train(cfg, tiny_cache, tmp_path / "run", progress=False)
    metrics = evaluate_run(run, split="train", n_boot=20, device="cpu", progress=False, by=["view"],
                           min_group_class=3)
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    logged = client.search_runs([client.get_experiment_by_name("subgroups").experiment_id])[0]
    for row in metrics["subgroups"]["columns"]["view"]:
        key = f"train/subgroups/view/{row['group']}"
        assert logged.data.metrics[f"{key}/roc_auc"] == pytest.approx(row["metrics"]["roc_auc"])
        assert logged.data.metrics[f"{key}/n"] == row["n"] == 18
    files = {a.path for a in client.list_artifacts(logged.info.run_id, "evaluation")}
    assert {f"evaluation/subgroups_train{s}" for s in (".json", ".csv", ".png")} <= files
