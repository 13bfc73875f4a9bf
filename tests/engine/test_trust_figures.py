"""Numbers that may mean nothing say so (issue 13, item 8): a validation split with fewer than
eval.threshold_min_class positives or negatives keeps the default threshold and says why, in the checkpoint,
on stderr at the end of training, in metrics_<split>.json, in `evaluate`'s output and in the report."""

from __future__ import annotations

import contextlib
import io
import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from medclf.config import load_config
from medclf.engine.evaluate import evaluate_run
from medclf.engine.state import EarlyStopper
from medclf.engine.train import train
from medclf.evaluation.metrics import METRIC_KEYS
from medclf.report.html import build_report

pytestmark = pytest.mark.slow  # trains a model or starts a subprocess (make test-fast skips it)

# the tiny cache's val split: 12 images, 4 positives and 8 negatives, both below the default minimum of 10
REASON = "default 0.5: validation has 4 positives and 8 negatives (< 10)"
FALLBACK = f"the operating threshold is not fitted to data ({REASON})"
FEW_POS = "only 4 positives (< 10): sensitivity, precision and F1 and ROC AUC rest on too few images to mean much"
FEW_NEG = "only 8 negatives (< 10): specificity and ROC AUC rest on too few images to mean much"


@pytest.fixture(scope="module")
def small_val_run(tiny_cache, scratch, request):
    """Two epochs at the default eval.threshold_min_class; returns (run, what training wrote to stderr)."""
    run = scratch(request, "trust") / "run"
    cfg = load_config(None, ["model.name=resnet18", "model.input_size=32", "data.batch_size=8", "train.epochs=2",
                             "train.max_steps_per_epoch=2", "eval.ood_detector=false", "train.device=cpu"])
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        train(cfg, tiny_cache, run, progress=False)
    return run, err.getvalue()


def test_threshold_falls_back_with_its_reason_in_the_checkpoint(small_val_run):
    run, stderr = small_val_run
    contract = torch.load(run / "best.pt", weights_only=True)["contract"]
    assert contract["threshold"] == 0.5
    assert (contract["threshold_source"], contract["threshold_reason"]) == ("default", REASON)
    warnings = contract["threshold_warnings"]
    assert warnings[:3] == [FALLBACK, f"validation: {FEW_POS}", f"validation: {FEW_NEG}"]
    assert f"warning: {run}: {FALLBACK}\n" in stderr and f"warning: {run}: validation: {FEW_POS}\n" in stderr


def test_evaluate_lists_the_warnings_and_keeps_the_metrics_keys(small_val_run):
    run, _ = small_val_run
    from medclf.cli.main import app

    result = CliRunner().invoke(app, ["evaluate", str(run), "--split", "val", "--n-boot", "50"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics_val.json").read_text())
    assert set(METRIC_KEYS) | {"ci", "split", "positive_index", "n_boot"} <= set(metrics)
    assert (metrics["n"], metrics["n_pos"], metrics["threshold"]) == (12, 4, 0.5)
    assert metrics["threshold_reason"] == REASON
    assert metrics["warnings"][:2] == [FEW_POS, FEW_NEG] and metrics["warnings"][-1] == FALLBACK
    assert f"warning: val: {FEW_POS}" in result.output and f"warning: val: {FALLBACK}" in result.output


def test_report_boxes_the_warnings_and_names_the_kept_epoch(small_val_run, tmp_path):
    run, _ = small_val_run
    evaluate_run(run, split="test", n_boot=50, progress=False)
    page = build_report(run, tmp_path / "report.html").read_text(encoding="utf-8")
    assert page.count('<div class="warning" role="note"><strong>These figures may mean nothing') >= 2
    assert "only 4 positives (&lt; 10)" in page and f"({REASON.replace('<', '&lt;')})" in page
    kept = EarlyStopper.kept_epoch(pd.read_csv(run / "history.csv"), "val_auc")
    assert kept == torch.load(run / "best.pt", weights_only=True)["extra"]["epoch"]  # the replay finds best.pt's
    assert f"at epoch {kept}: the kept checkpoint (best.pt), selected by train.early_stop_metric" in page
