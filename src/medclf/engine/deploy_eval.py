"""What `evaluate` adds for using a model at a site (issue 21): calibration with intervals, decision curves and
the conformal refer band, all read from the predictions table (no model needed).

Adds to `metrics_<tag>.json`:
- `calibration`: per curve label, ECE (15 bins) and Brier score with bootstrap intervals, and the temperature
  the run applies (`temperature`, None when off);
- `decision_curve`: the file name of `decision_curve_<tag>.csv` and, per label, the threshold-probability range
  where the model's net benefit beats both treat-all and treat-none;
- `conformal` (runs with a band, `eval.conformal_alpha`): coverage with its interval, mean set size, share
  referred, accuracy on the images not referred.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from medclf.contract import DataContract
from medclf.evaluation.calibration import calibration_with_ci
from medclf.evaluation.conformal import coverage_report, prediction_sets, refer, set_contains_truth
from medclf.evaluation.decision_curve import decision_curve_table
from medclf.io import atomic_path
from medclf.runs import RunDir
from medclf.tasks import multi_hot


# --- task-specific part (integrator: move into the Task object) ---------------------------------------------------
def curve_columns(table: pd.DataFrame, c: DataContract) -> tuple[np.ndarray, np.ndarray, list[str], list]:
    """(N x L 0/1 truth, N x L probabilities, L names, L operating thresholds or None) of the curves a run has:
    binary: the positive class; multiclass: each class against the rest (the positive class at the run's
    threshold, the others called by argmax, no threshold); multilabel: each label at its own threshold."""
    names = list(c.label_names)
    labels = table["label"].to_numpy()
    if c.multilabel:
        probs = table[[f"prob_{n}" for n in names]].to_numpy(np.float64)
        return multi_hot(labels, len(names)), probs, names, list(c.label_thresholds())
    if c.num_classes > 2:
        probs = table[[f"prob_{n}" for n in names]].to_numpy(np.float64)
        at = [c.threshold if k == c.positive_index else None for k in range(len(names))]
        return np.eye(len(names), dtype=np.int8)[labels.astype(np.int64)], probs, names, at
    truth = (labels == c.positive_index).astype(np.int8)[:, None]
    return truth, table[["prob"]].to_numpy(np.float64), [names[c.positive_index]], [c.threshold]


def class_probs_and_truth(table: pd.DataFrame, c: DataContract) -> tuple[np.ndarray, np.ndarray]:
    """The N x K probabilities the band was fitted on and the truth it is checked against (class indices;
    multilabel: N x K 0/1)."""
    truth, probs, _, _ = curve_columns(table, c)
    if c.multilabel:
        return probs, truth
    if c.num_classes == 2:
        p = probs[:, 0]
        full = np.zeros((len(p), 2))
        full[:, c.positive_index], full[:, 1 - c.positive_index] = p, 1.0 - p
        return full, table["label"].to_numpy().astype(np.int64)
    return probs, table["label"].to_numpy().astype(np.int64)


def decision_correct(table: pd.DataFrame, c: DataContract) -> np.ndarray:
    """Per image: is the run's decision right (multilabel: every label right)?"""
    if c.multilabel:
        truth = multi_hot(table["label"].to_numpy(), c.num_classes).astype(bool)
        called = table[[f"pred_{n}" for n in c.label_names]].to_numpy().astype(bool)
        return (truth == called).all(axis=1)
    names = np.asarray(c.label_names)
    return table["predicted"].astype(str).to_numpy() == names[table["label"].to_numpy().astype(np.int64)]
# -------------------------------------------------------------------------------------------------------------------


def deploy_evaluation(table: pd.DataFrame, contract: DataContract, rd: RunDir, tag: str, n_boot: int = 1000,
                      seed: int = 0) -> dict[str, Any]:
    """Writes the decision-curve table and plot; returns the `calibration`, `decision_curve` (and `conformal`)
    entries for the metrics file."""
    from medclf.evaluation.deploy_plots import plot_decision_curve  # matplotlib is only needed here

    truth, probs, names, operating = curve_columns(table, contract)
    calibration = {name: calibration_with_ci(truth[:, k], probs[:, k], n_boot=n_boot, seed=seed)
                   for k, name in enumerate(names)}
    curves = decision_curve_table(truth, probs, names)
    with atomic_path(rd.decision_curve(tag)) as tmp:
        curves.to_csv(tmp, index=False)
    plot_decision_curve(curves, rd.plot("decision_curve", tag), dict(zip(names, operating)), title=tag)
    out: dict[str, Any] = {
        "calibration": {"temperature": contract.temperature, "per_label": calibration},
        "decision_curve": {"file": rd.decision_curve(tag).name, "useful_range": useful_ranges(curves)},
    }
    if contract.conformal:
        out["conformal"] = conformal_evaluation(table, contract, n_boot, seed)
    return out


def useful_ranges(curves: pd.DataFrame) -> dict[str, list[float] | None]:
    """Per label: [lowest, highest] threshold probability where the model beats treat-all and treat-none."""
    out: dict[str, list[float] | None] = {}
    for label, rows in curves.groupby("label", sort=False):
        better = rows[(rows["net_benefit"] > rows["treat_all"]) & (rows["net_benefit"] > 0)]["threshold"]
        out[str(label)] = [float(better.min()), float(better.max())] if len(better) else None
    return out


def conformal_evaluation(table: pd.DataFrame, contract: DataContract, n_boot: int = 1000,
                         seed: int = 0) -> dict[str, Any]:
    """Coverage of the run's band on these images (the images must be exchangeable with the ones it was fitted
    on for 1 - alpha to be promised), mean set size, share referred, accuracy where not referred."""
    band, task = contract.conformal, contract.task
    probs, truth = class_probs_and_truth(table, contract)
    sets = prediction_sets(probs, band, task)
    report = coverage_report(set_contains_truth(sets, truth, task), sets.sum(axis=-1), refer(sets, task),
                             decision_correct(table, contract), band["alpha"], n_boot=n_boot, seed=seed)
    report.update(score=band["score"], fitted_on=band.get("fitted_on"), n_fitted=band.get("n"),
                  guarantee=("per label" if task == "multilabel" else "per image") + ", marginal over images")
    ci = report["coverage_ci"]
    report["below_target"] = bool(ci is not None and ci[1] < report["target_coverage"])
    return report
