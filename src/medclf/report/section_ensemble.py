"""Report section for ensemble runs: how the members were trained and combined, and how much they disagree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medclf.report.html import (
    HOW_TO_READ,
    esc,
    fmt,
    fmt_threshold,
    html_table,
    read_run_json,
    register_section,
    warning_box,
)
from medclf.runs.layout import RunDir

_COMBINE_TEXT = {
    "mean": "the mean of the members' probabilities",
    "weighted": "a weighted mean of the members' probabilities (weights proportional to validation ROC AUC)",
    "vote": "the fraction of members voting positive at their own thresholds",
}


def section_ensemble(run_dir: Path) -> str | None:
    path = RunDir(run_dir).ensemble_path
    if not path.is_file():
        return None
    spec = read_run_json(path)
    info = spec.get("member_info") or [{"dir": d} for d in spec.get("members", [])]
    weights = spec.get("weights") or [None] * len(info)
    rows = [[m.get("dir", ""), m.get("model", ""), fmt(m.get("n_train_images")), fmt(m.get("n_train_patients")),
             m.get("validated_on", ""), fmt(m.get("val_auc")), fmt_threshold(m.get("threshold")), fmt(w)]
            for m, w in zip(info, weights)]
    table = html_table(["member", "model", "training images", "training patients", "validated on",
                        "val ROC AUC", "threshold", "weight"], rows, numeric=(2, 3, 5, 6, 7))
    intro = (f"{len(info)} members ({spec.get('mode', '?')} mode) combined as "
             f"{_COMBINE_TEXT.get(spec.get('combine'), spec.get('combine'))}. The ensemble's operating threshold "
             f"{fmt_threshold(spec.get('threshold'))} {_threshold_origin(spec)}.")
    caveats = warning_box("The ensemble's threshold may mean nothing", spec.get("threshold_warnings") or [])
    return f'<p class="note">{esc(intro)}</p>{caveats}{table}{disagreement(run_dir, spec)}'


def _threshold_origin(spec: dict) -> str:
    """How ensemble.json's threshold came about (older files carry no reason)."""
    reason = spec.get("threshold_reason")
    if spec.get("threshold_source") == "default":
        return f"is not fitted to data: {reason}"
    chosen = (f"was chosen on the {spec.get('threshold_split', 'val')} split ({spec.get('threshold_method', '?')}) "
              "with the combined probabilities")
    return f"{chosen}: {reason}" if reason else chosen


def disagreement(run_dir: Path, spec: dict) -> str:
    """Mean member spread (`std` column) per evaluated split, overall and for right vs wrong calls."""
    rows = []
    rd = RunDir(run_dir)
    for split, csv in rd.prediction_tables().items():
        table = pd.read_csv(csv)
        if "std" not in table.columns or table.empty:
            continue
        metrics_path = rd.metrics(split)
        pos = int(read_run_json(metrics_path).get("positive_index", 1)) if metrics_path.is_file() else 1
        called = table["prob"].to_numpy() >= float(spec.get("threshold", 0.5))
        right = called == (table["label"].to_numpy() == pos)
        std = table["std"].to_numpy(dtype=float)
        rows.append([split, fmt(len(table)), fmt(float(std.mean())), _mean(std[right]), _mean(std[~right])])
    if not rows:
        return ""
    return ("<h3>Member disagreement</h3><p class=\"note\">Standard deviation of the members' positive-class "
            "probabilities per image (the predictions table's std column), averaged.</p>"
            + html_table(["split", "images", "mean std", "mean std, right calls", "mean std, wrong calls"],
                         rows, numeric=(1, 2, 3, 4)))


def _mean(values: np.ndarray) -> str:
    return fmt(float(values.mean())) if values.size else "—"


register_section("Ensemble", 35, section_ensemble, HOW_TO_READ["ensemble"])
