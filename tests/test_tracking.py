"""TensorBoard and MLflow logs read back with the real libraries equal the run's own files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from medclf.config import load_config
from medclf.runs import RunDir, open_run

mlflow = pytest.importorskip("mlflow")

TINY = ["model.name=resnet18", "model.input_size=32", "data.batch_size=8", "train.epochs=2", "train.lr=0.003",
        "train.warmup_epochs=0", "train.device=cpu", "eval.ood_detector=false"]


def mlflow_overrides(store, experiment: str) -> list[str]:
    return ["track.mlflow=true", f"track.mlflow_uri=sqlite:///{store / 'mlflow.db'}", f"track.experiment={experiment}"]


@pytest.fixture(scope="module")
def store(scratch, request):
    """One MLflow sqlite store for the module (creating one takes seconds); each test has its own experiment."""
    return scratch(request, "mlflow")


@pytest.fixture(scope="module")
def tracked_run(tiny_cache, store):
    """A tiny run trained and evaluated on test with TensorBoard and MLflow (experiment 'tests')."""
    from medclf.engine.evaluate import evaluate_run
    from medclf.engine.train import train

    cfg = load_config(None, TINY + mlflow_overrides(store, "tests"))
    run_dir = train(cfg, tiny_cache, store / "run", progress=False)
    metrics = evaluate_run(run_dir, split="test", n_boot=50, device="cpu", progress=False)
    return RunDir(run_dir), metrics, f"sqlite:///{store / 'mlflow.db'}"


@pytest.mark.slow
def test_tensorboard_events_equal_history_and_metrics(tracked_run, tensorboard_scalars):
    rd, metrics, _ = tracked_run
    history = pd.read_csv(rd.history_path)
    scalars = tensorboard_scalars(rd.tensorboard_dir)
    for column in ("train_loss", "val_loss", "val_auc", "lr"):
        steps, values = zip(*sorted(scalars[column]))
        assert list(steps) == history["epoch"].tolist()
        np.testing.assert_allclose(values, history[column].to_numpy(), rtol=1e-6)  # stored as float32
    assert scalars["test/roc_auc"] == [(0, pytest.approx(metrics["roc_auc"], rel=1e-6))]
    assert scalars["test/tp"][0][1] == metrics["tp"]
    assert scalars["test/recall_ci_low"][0][1] == pytest.approx(metrics["ci"]["recall"][0], rel=1e-6)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    images = set()
    for events in rd.tensorboard_dir.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"images": 0})
        acc.Reload()
        images |= set(acc.Tags()["images"])
    assert {"curves", "test/confusion", "test/roc"} <= images


@pytest.mark.slow
def test_mlflow_run_holds_params_history_metrics_and_artifacts(tracked_run):
    rd, metrics, uri = tracked_run
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert len(runs) == 1  # training and evaluation share one MLflow run
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["train.epochs"] == "2" and run.data.params["model.name"] == "resnet18"
    history = pd.read_csv(rd.history_path)
    logged = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in sorted(logged, key=lambda m: m.step)] == [1, 2]
    np.testing.assert_allclose([m.value for m in sorted(logged, key=lambda m: m.step)], history["val_loss"])
    assert run.data.metrics["test/roc_auc"] == pytest.approx(metrics["roc_auc"])
    assert run.data.metrics["test/f1_ci_high"] == pytest.approx(metrics["ci"]["f1"][1])
    assert run.data.metrics["test/n"] == metrics["n"] == 12
    artifacts = {a.path for folder in ("plots", "evaluation") for a in client.list_artifacts(run.info.run_id, folder)}
    assert {"plots/curves.png", "plots/confusion_test.png", "evaluation/metrics_test.json"} <= artifacts
    from medclf.report.html import build_report

    build_report(rd.path)  # the report goes to the run that trained the model, too
    assert "report.html" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert json.loads(rd.tracking_path.read_text())["mlflow"]["run_id"] == run.info.run_id


@pytest.mark.slow
def test_mlflow_model_gives_the_predictors_probabilities(tracked_run, tiny_cache):
    rd, _, uri = tracked_run
    model_uri = json.loads(rd.tracking_path.read_text())["mlflow"]["model_uri"]
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    finally:
        mlflow.set_tracking_uri(None)
    images = np.load(tiny_cache / "images.npy")[:6]
    table = model.predict(images)
    expected = open_run(rd.path).predictor().predict_arrays(images).probs[:, 1]
    np.testing.assert_allclose(table["prob"].to_numpy(), expected, atol=1e-6)
    assert set(table["predicted"]) <= {"normal", "pneumonia"}


@pytest.mark.slow
def test_study_logs_one_parent_with_a_child_per_variant(tiny_cache, store, tmp_path):
    from medclf.study import run_study

    base = dict(o.split("=", 1) for o in TINY + mlflow_overrides(store, "study"))
    base["train.epochs"] = 1
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"data": str(tiny_cache), "out": str(tmp_path / "study"), "n_boot": 20,
                                     "base": {"overrides": [f"{k}={v}" for k, v in base.items()]},
                                     "variants": {"ce": {}, "focal": {"overrides": {"loss.name": "focal"}}}}))
    run_study(study, progress=False)
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("study").experiment_id])
    parents = [r for r in runs if r.data.tags["medclf.kind"] == "study"]
    assert len(parents) == 1 and len(runs) == 3
    children = {r.info.run_name: r for r in runs if r is not parents[0]}
    assert set(children) == {"ce", "focal"}
    assert {r.data.tags["mlflow.parentRunId"] for r in children.values()} == {parents[0].info.run_id}
    assert children["focal"].data.params["loss.name"] == "focal"
    assert "test/roc_auc" in children["ce"].data.metrics  # each variant's evaluation went to its own run
    assert any(a.path == "comparison.md" for a in client.list_artifacts(parents[0].info.run_id))


def test_mlflow_store_is_the_config_then_the_environment_then_a_sqlite_file_in_home(monkeypatch, tmp_path):
    from medclf.tracking.mlflow_backend import artifact_root, tracking_uri

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = tracking_uri(load_config(None, []))
    assert default == f"sqlite:///{tmp_path / '.medclf' / 'mlflow.db'}" and (tmp_path / ".medclf").is_dir()
    assert artifact_root(default) == (tmp_path / ".medclf" / "mlartifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(load_config(None, [])) == "http://127.0.0.1:5000"
    assert artifact_root("http://127.0.0.1:5000") is None  # a server keeps its own artifacts
    assert tracking_uri(load_config(None, ["track.mlflow_uri=sqlite:///x.db"])) == "sqlite:///x.db"


@pytest.mark.slow
def test_evaluate_mlflow_option_logs_to_the_named_store(tracked_run, store, tmp_path):
    """`evaluate RUN --mlflow URI`: the metrics go to that store (here a new one, so a new MLflow run)."""
    import shutil

    from typer.testing import CliRunner

    from medclf.cli.main import app

    rd, _, _ = tracked_run
    copy = tmp_path / "copy"
    shutil.copytree(rd.path, copy)
    uri = f"sqlite:///{tmp_path / 'other.db'}"
    result = CliRunner().invoke(app, ["evaluate", str(copy), "--split", "val", "--n-boot", "20", "--mlflow", uri])
    assert result.exit_code == 0, result.output
    metrics = json.loads((copy / "metrics_val.json").read_text())
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert len(runs) == 1 and runs[0].data.tags["medclf.kind"] == "evaluate"
    assert runs[0].data.metrics["val/roc_auc"] == pytest.approx(metrics["roc_auc"])
    assert json.loads((copy / "tracking.json").read_text())["mlflow"]["uri"] == uri


def test_mlflow_warnings_reach_the_terminal_without_ansi_codes():
    """MLflow colours some warnings (extra={"color": "red"}); medclf renders them plainly (issue 22, item 12)."""
    import logging

    from medclf.tracking.mlflow_backend import mlflow_module

    mlflow_module()
    record = logging.LogRecord("mlflow.pyfunc", logging.WARNING, __file__, 1, "model has no signature", None, None)
    record.color = "red"
    handlers = logging.getLogger("mlflow").handlers
    assert handlers
    for handler in handlers:
        text = handler.format(record)
        assert "\x1b" not in text and text.endswith(" WARNING mlflow.pyfunc: model has no signature")
