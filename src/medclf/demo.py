"""The demo: a synthetic dataset in the RSNA layout taken through prepare, train, evaluate and report, on the CPU
in a few minutes (explain, serve, ensembles and the rest: the README's commands)."""

from __future__ import annotations

from pathlib import Path

from medclf.config import load_config
from medclf.runs.layout import RunDir


def run_demo(out: str | Path, n_patients: int = 160, seed: int = 0) -> dict[str, Path]:
    """Returns the paths it produced: synthetic data, cache, run, report."""
    from medclf.data.prepare import prepare_rsna
    from medclf.data.synthetic import make_synthetic_rsna, synthetic_marker
    from medclf.engine.evaluate import evaluate_run
    from medclf.engine.train import train
    from medclf.report.html import build_report

    out = Path(out)
    raw = out / "rsna-synthetic"
    labels = raw / "stage_2_train_labels.csv"
    if synthetic_marker(labels) is None:  # (re)made when absent, or from a version without the marker
        make_synthetic_rsna(raw, n_patients=n_patients, seed=seed)
    print(f"synthetic RSNA-layout data (not real patients): {raw}")
    cache = prepare_rsna(
        images=raw / "stage_2_train_images", labels=labels,
        classes=raw / "stage_2_detailed_class_info.csv", out=out / "cache", size=64, seed=seed,
    )
    print(f"cache: {cache}")
    run = out / "run"
    cfg = load_config("demo")
    train(cfg, cache, run, resume=RunDir(run).last.exists())
    evaluate_run(run, split="val", n_boot=200)
    metrics = evaluate_run(run, split="test", n_boot=200)
    report = build_report(run)
    print(f"run: {run}\ntest ROC-AUC: {metrics['roc_auc']}\nreport: {report}")
    return {"data": raw, "cache": Path(cache), "run": run, "report": report}
