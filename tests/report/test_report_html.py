"""The HTML report: one self-contained file built from whatever the run directory holds."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pandas as pd
import pytest

from medclf.errors import MedclfError
from medclf.engine.evaluate import write_evaluation
from medclf.evaluation.plots import plot_curves
from medclf.report.html import build_report, register_section, registered_sections, unregister_section

EVIL = "<script>alert('x')</script>"


@pytest.fixture()
def run_dir(tmp_path):
    run = tmp_path / "run1"
    run.mkdir()
    (run / "config.yaml").write_text(
        f"model:\n  name: resnet18\n  input_size: 64\ntrain:\n  epochs: 3\n  note: \"{EVIL}\"\n", encoding="utf-8")
    history = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [0.7, 0.5, 0.4], "val_loss": [0.6, 0.5, 0.55],
                            "val_auc": [0.7, 0.81, 0.8], "val_f1": [0.5, 0.6, 0.62], "val_accuracy": [0.6, 0.7, 0.7],
                            "lr": [1e-3] * 3, "seconds": [30.0] * 3})
    history.to_csv(run / "history.csv", index=False)
    plot_curves(history, run / "curves.png")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    prob = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    write_evaluation(pd.DataFrame({"id": range(200), "label": y, "prob": prob}), 0.5, run, "test", n_boot=100)
    return run


def test_report_is_self_contained(run_dir):
    path = build_report(run_dir)
    assert path == run_dir / "report.html"
    page = path.read_text(encoding="utf-8")
    assert 'src="http' not in page and "<link" not in page and "<script" not in page
    assert "url(" not in page and "@import" not in page
    # curves + confusion/roc/pr/calibration, each a decodable PNG
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 5
    assert all(base64.b64decode(b).startswith(b"\x89PNG\r\n\x1a\n") for b in images)


def test_report_shows_metrics_with_intervals(run_dir):
    metrics = json.loads((run_dir / "metrics_test.json").read_text())
    page = build_report(run_dir).read_text(encoding="utf-8")
    for key in ("roc_auc", "recall", "specificity", "f1"):
        lo, hi = metrics["ci"][key]
        assert f"{metrics[key]:.3f}" in page and f"{lo:.3f} – {hi:.3f}" in page
    assert f"TP {metrics['tp']}" in page and "3 epochs" in page and "best val_auc 0.810 at epoch 2" in page
    assert "resnet18" in page


def test_config_text_is_escaped(run_dir):
    page = build_report(run_dir).read_text(encoding="utf-8")
    assert EVIL not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page


def test_data_summary_and_missing_sections(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text("model: {name: vit}\n")
    (run / "data_summary.json").write_text(json.dumps({
        "split_counts": {"test": {"normal": 90, "pneumonia": 10}, "train": {"normal": 700, "pneumonia": 300}},
        "view_counts": {"train": {"PA": 600, "AP": 400}}, "cache": "/c", "source": "rsna"}))
    page = build_report(run, tmp_path / "out.html").read_text(encoding="utf-8")
    assert "<td>train</td><td class=\"num\">700</td><td class=\"num\">300</td><td class=\"num\">1,000</td>" in page
    assert page.index("<td>train</td>") < page.index("<td>test</td>")  # train before test
    assert 'id="data"' in page and 'id="training"' not in page and 'id="evaluation"' not in page
    assert not (run / "report.html").exists()


def test_needs_config(tmp_path):
    with pytest.raises(MedclfError, match="config.yaml"):
        build_report(tmp_path)


def test_registered_sections_are_added_in_order(run_dir):
    register_section("Robustness <test>", 45, lambda d: f"<p>files: {len(list(d.iterdir()))}</p>")
    register_section("Nothing here", 46, lambda d: None)
    register_section("Broken", 47, lambda d: 1 / 0)
    try:
        builtin = ["Summary", "Data", "Configuration", "Training", "Evaluation"]
        # feature modules (ensemble, explain, robustness) register their own sections too; keep to the built-ins
        assert [s.name for s in registered_sections() if s.name in builtin] == builtin
        with pytest.warns(UserWarning, match="Broken"):
            page = build_report(run_dir).read_text(encoding="utf-8")
    finally:
        for name in ("Robustness <test>", "Nothing here", "Broken"):
            unregister_section(name)
    assert "<h2>Robustness &lt;test&gt;</h2>" in page and 'id="robustness-test"' in page
    assert page.index('id="evaluation"') < page.index('id="robustness-test"')
    assert "Nothing here" not in page
    assert "could not be built: ZeroDivisionError" in page
