"""What `evaluate` adds for using a model at a site (issue 21): calibration with intervals, decision curves and
the conformal refer band, all read from the predictions table (no model needed).

Adds to `metrics_<tag>.json`:
- `calibration`: per curve label, ECE (15 bins) and Brier score with bootstrap intervals, and the temperature
  the run applies (`temperature`, None when off);
- `decision_curve`: the file name of `decision_curve_<tag>.csv` and, per label, the threshold-probability range
  where the model's net benefit beats both treat-all and treat-none;
- `conformal` (runs with a band, `eval.conformal_alpha`): coverage with its interval, mean set size, share
  referred, accuracy on the images not referred;
- `operating_point`: sensitivity and specificity at the run's threshold(s) on the images it was chosen on next to
  these images', and which moved beyond their intervals (medclf.evaluation.shift).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from medclf.contract import DataContract
from medclf.evaluation.calibration import calibration_with_ci
from medclf.evaluation.conformal import coverage_report
from medclf.evaluation.decision_curve import decision_curve_table
from medclf.evaluation.shift import operating_shift, shift_warnings
from medclf.io import atomic_path
from medclf.runs import RunDir
from medclf.tasks import Task, task_for


def deploy_evaluation(table: pd.DataFrame, contract: DataContract, rd: RunDir, tag: str, n_boot: int = 1000,
                      seed: int = 0, remedy: str = "medclf recalibrate") -> dict[str, Any]:
    """Writes the decision-curve table and plot; returns the `calibration`, `decision_curve` (and `conformal`,
    `operating_point`) entries for the metrics file, and `deploy_warnings`: the lines saying the operating point
    or the band did not travel, each ending with `remedy`."""
    from medclf.evaluation.deploy_plots import plot_decision_curve  # matplotlib is only needed here

    task = task_for(contract)
    labels, probs = table["label"].to_numpy(), task.table_probs(table)
    truth, curve_probs, names, operating = task.curves(labels, probs)
    calibration = {name: calibration_with_ci(truth[:, k], curve_probs[:, k], n_boot=n_boot, seed=seed)
                   for k, name in enumerate(names)}
    curves = decision_curve_table(truth, curve_probs, names)
    with atomic_path(rd.decision_curve(tag)) as tmp:
        curves.to_csv(tmp, index=False)
    plot_decision_curve(curves, rd.plot("decision_curve", tag), dict(zip(names, operating)), title=tag)
    out: dict[str, Any] = {
        "calibration": {"temperature": contract.temperature, "per_label": calibration},
        "decision_curve": {"file": rd.decision_curve(tag).name, "useful_range": useful_ranges(curves)},
    }
    if contract.conformal:
        correct = table["predicted"].astype(str).to_numpy() == np.asarray(task.label_texts(labels))
        out["conformal"] = conformal_evaluation(task, labels, probs, correct, contract.conformal, n_boot, seed)
    if contract.operating_point:  # runs from before it have none
        out["operating_point"] = operating_shift(contract.operating_point, task.operating_counts(labels, probs))
    out["deploy_warnings"] = shift_warnings(out.get("operating_point"), out.get("conformal"), remedy)
    return out


def useful_ranges(curves: pd.DataFrame) -> dict[str, list[float] | None]:
    """Per label: [lowest, highest] threshold probability where the model beats treat-all and treat-none."""
    out: dict[str, list[float] | None] = {}
    for label, rows in curves.groupby("label", sort=False):
        better = rows[(rows["net_benefit"] > rows["treat_all"]) & (rows["net_benefit"] > 0)]["threshold"]
        out[str(label)] = [float(better.min()), float(better.max())] if len(better) else None
    return out


def conformal_evaluation(task: Task, labels: np.ndarray, probs: np.ndarray, correct: np.ndarray,
                         band: dict[str, Any], n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Coverage of the run's band on these images (the images must be exchangeable with the ones it was fitted
    on for 1 - alpha to be promised), mean set size, share referred, and accuracy where not referred (`correct`:
    per image, the run's call spells the truth: a class; the set of findings)."""
    sets = task.prediction_sets(probs, band)
    report = coverage_report(task.set_covers(sets, labels), sets.sum(axis=-1), task.refer(sets), correct,
                             band["alpha"], n_boot=n_boot, seed=seed)
    report.update(score=band["score"], fitted_on=band.get("fitted_on"), n_fitted=band.get("n"),
                  guarantee=task.band_guarantee)
    ci = report["coverage_ci"]
    report["below_target"] = bool(ci is not None and ci[1] < report["target_coverage"])
    return report
