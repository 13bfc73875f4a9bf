"""The HTML report: one self-contained file built from whatever the run directory holds."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pandas as pd
import pytest

from medclf.engine.evaluate import write_evaluation
from medclf.errors import MedclfError
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


def test_kept_epoch_and_selection_metric_are_named(tmp_path):
    # the case: val loss is lowest at epoch 3, but val_auc (train.early_stop_metric) kept epoch 1
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text("model: {name: resnet18}\ntrain: {early_stop_metric: val_auc}\n")
    pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [0.7, 0.5, 0.4], "val_loss": [0.6, 0.5, 0.45],
                  "val_auc": [0.9, 0.8, 0.85]}).to_csv(run / "history.csv", index=False)
    page = build_report(run).read_text(encoding="utf-8")
    assert ("3 epochs; best val_auc 0.900 at epoch 1: the kept checkpoint (best.pt), selected by "
            "train.early_stop_metric; lowest val_loss 0.450 at epoch 3") in page


def test_unevaluated_synthetic_run_says_what_to_run(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text("model: {name: resnet18}\n")
    (run / "data_summary.json").write_text(json.dumps({
        "source": "rsna", "split_counts": {"train": {"normal": 7, "pneumonia": 3}},
        "synthetic": {"note": "synthetic images made by medclf (not real patients)"}}))
    page = build_report(run).read_text(encoding="utf-8")
    assert 'id="summary"' in page and 'id="evaluation"' not in page
    assert f"This run has not been evaluated yet: run `medclf evaluate {run} --split test`" in page
    assert f"Explanations: `medclf explain {run} --data CACHE --score`" in page
    assert page.count("<strong>Synthetic data</strong>") == 2  # the summary and the data section
    assert "This run&#x27;s data are synthetic images made by medclf (not real patients): its figures" in page


def test_old_metrics_files_get_their_warnings_worked_out(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text("model: {name: resnet18}\n")
    old = {"n": 12, "n_pos": 1, "tp": 1, "fp": 0, "fn": 0, "tn": 11, "recall": 1.0, "roc_auc": 0.4,
           "threshold": 2.5e-07, "ci": {"recall": [1.0, 1.0]}}
    (run / "metrics_val.json").write_text(json.dumps(old))  # written before metrics carried "warnings"
    page = build_report(run).read_text(encoding="utf-8")
    for text in ("only 1 positive (&lt; 10)", "ROC AUC 0.400 is below 0.5", "the 95% interval of recall collapses"):
        assert page.count(text) == 2, text  # the summary's box and the evaluation section's


def test_ensemble_section_says_why_its_threshold_is_the_default(tmp_path):
    run = tmp_path / "ens"
    run.mkdir()
    (run / "config.yaml").write_text("model: {name: resnet18}\n")
    reason = "default 0.5: validation has 1 positive (< 10)"
    (run / "ensemble.json").write_text(json.dumps({
        "format": "medclf-ensemble", "mode": "partition", "combine": "mean", "members": ["members/0"],
        "weights": [1.0], "threshold": 0.5, "threshold_method": "f1", "threshold_source": "default",
        "threshold_reason": reason,
        "threshold_warnings": [f"the operating threshold is not fitted to data ({reason})"]}))
    page = build_report(run).read_text(encoding="utf-8")
    assert "operating threshold 0.5 is not fitted to data: default 0.5: validation has 1 positive (&lt; 10)." in page
    assert "<strong>The ensemble&#x27;s threshold may mean nothing</strong>" in page


def test_configuration_shows_what_differs_from_the_preset(tmp_path):
    from medclf.config import load_config, save_config

    run = tmp_path / "r"
    run.mkdir()
    save_config(load_config("pneumoniamnist_cpu", ["train.epochs=3", "data.batch_size=16"]), run / "config.yaml")
    preset = load_config("pneumoniamnist_cpu")
    page = build_report(run).read_text(encoding="utf-8")
    section = page[page.index('id="configuration"'):page.index("</section>", page.index('id="configuration"'))]
    changed, full = section.split("<details>")
    assert "Settings that differ from preset pneumoniamnist_cpu (2 of" in changed
    assert f"<td>train.epochs</td><td>{preset.train.epochs}</td><td>3</td>" in changed
    assert f"<td>data.batch_size</td><td>{preset.data.batch_size}</td><td>16</td>" in changed
    assert changed.count("<tr>") == 3  # header + the two changed keys, not the ~70 others
    assert "<summary>Full resolved config (config.yaml)</summary>" in full and "<td>model.name</td>" in full


def test_configuration_without_a_preset_is_compared_with_the_defaults(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text("model: {name: densenet121}\n")
    page = build_report(run).read_text(encoding="utf-8")
    assert "Settings that differ from the defaults (1 of" in page
    assert "<td>model.name</td><td>resnet18</td><td>densenet121</td>" in page


def test_every_section_says_how_to_read_it(run_dir):
    page = build_report(run_dir).read_text(encoding="utf-8")
    sections = re.findall(r'<section id="([a-z-]+)"><h2>[^<]*</h2>\n(<p class="howto">)?', page)
    assert [s for s, _ in sections] == ["summary", "configuration", "training", "evaluation"]
    assert all(howto for _, howto in sections)
    assert "points on the diagonal mean a predicted 30% is positive 30% of the time" in page


def test_overlapping_curves_differ_in_line_style_and_marker():
    from medclf.evaluation.plots import CURVE_STYLES, METRIC_COLUMNS

    looks = {(s["linestyle"], s["marker"]) for s in CURVE_STYLES}
    assert len(looks) == len(CURVE_STYLES) >= len(METRIC_COLUMNS)


@pytest.mark.slow
def test_report_prints_on_a4_pages(run_dir, tmp_path):
    """Printed to PDF by a real browser: A4 portrait pages (the pages were also looked at; docs/evaluation.md)."""
    import shutil
    import subprocess

    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no Chromium to print the report with (make browser installs it)")
    pdf = tmp_path / "report.pdf"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-pdf-header-footer",
                    f"--print-to-pdf={pdf}", build_report(run_dir).as_uri()], capture_output=True, timeout=120,
                   check=True)
    boxes = re.findall(rb"/MediaBox \[0 0 ([\d.]+) ([\d.]+)\]", pdf.read_bytes())
    assert len(boxes) >= 2  # several pages, each A4 (595 x 842 pt); Chromium's default is US Letter (612 x 792)
    assert {(round(float(w)), round(float(h))) for w, h in boxes} == {(595, 842)}


def test_data_section_names_patients_and_unknown_views(tmp_path):
    """Empty views (MedMNIST) are the group `unknown`, as in `evaluate --by`; the column that grouped the patients
    is shown (issue 22, items 1 and 7)."""
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text("model: {name: vit}\n")
    (run / "data_summary.json").write_text(json.dumps({
        "split_counts": {"train": {"normal": 7, "pneumonia": 3}}, "view_counts": {"train": {"": 10}},
        "source": "folder", "patients": "grouped by the labels column 'PatientID'; no patient is in two splits"}))
    page = build_report(run, tmp_path / "out.html").read_text(encoding="utf-8")
    assert "<th>split</th><th class=\"num\">unknown</th><th class=\"num\">total</th>" in page
    assert ("<b>patients</b>: grouped by the labels column &#x27;PatientID&#x27;; no patient is in two splits"
            in page)
