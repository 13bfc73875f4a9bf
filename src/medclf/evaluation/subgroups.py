"""Results per patient subgroup (view, sex, age band, any manifest column), as pure functions on arrays.

For each group of a column: `binary_metrics` on the group's rows at the run's operating threshold (the same
numbers metrics.json would hold were the split only that group), and a between-group test of ROC AUC: the group
against the rest of the split (every other row, "unknown" included). The group and the rest are disjoint sets of
images, so each is resampled on its own (an unpaired bootstrap): diff* = AUC*(group) - AUC*(rest), with a
percentile 95% interval and the two-sided bootstrap p-value of `paired_bootstrap`.

A group (or its rest) with fewer than `min_class` positives or negatives is "too small": it is reported with n and
n_pos only, never with metric numbers, since an AUC on 4 positives is noise. Empty values (no view in the header,
age not recorded) and ages outside the bins form the group "unknown", which is reported like any other.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from medclf.errors import MedclfError
from medclf.evaluation.bootstrap import bootstrap_metrics, bootstrap_p_value, percentile_interval
from medclf.evaluation.caveats import MIN_CLASS
from medclf.evaluation.metrics import binary_metrics, check_binary_inputs, none_if_nan, point_metrics

UNKNOWN = "unknown"
AGE_COLUMN = "age"
DEFAULT_AGE_BINS = (0, 18, 40, 60, 80, 200)  # years; [lo, hi) bands: children, young, middle, older, oldest
TEST_NAME = "group vs rest: unpaired bootstrap of the ROC AUC difference"


def check_age_bins(edges: Sequence[float]) -> list[float]:
    """At least two strictly increasing finite edges, as floats."""
    values = [float(e) for e in edges]
    if len(values) < 2 or not np.all(np.isfinite(values)) or np.any(np.diff(values) <= 0):
        raise MedclfError(f"age bins must be 2 or more increasing numbers (e.g. 0,18,40,60,80,200), got {list(edges)}")
    return values


def age_band_labels(edges: Sequence[float]) -> list[str]:
    """'[18, 40)' for each band between consecutive edges."""
    return [f"[{lo:g}, {hi:g})" for lo, hi in zip(edges[:-1], edges[1:])]


def age_groups(ages: Any, edges: Sequence[float] = DEFAULT_AGE_BINS) -> np.ndarray:
    """Band label per age (`[lo, hi)`, lo included); missing ages and ages outside the bins are 'unknown'."""
    edges = check_age_bins(edges)
    values = pd.to_numeric(pd.Series(ages, dtype=object), errors="coerce")
    bands = pd.cut(values, bins=edges, right=False, labels=age_band_labels(edges))
    return bands.astype(object).where(bands.notna(), UNKNOWN).to_numpy(dtype=object)


def group_labels(values: Any, column: str, age_bins: Sequence[float] = DEFAULT_AGE_BINS) -> np.ndarray:
    """The group of each row for one manifest column: age bands for `age`, the text value otherwise
    (empty or missing -> 'unknown')."""
    if column == AGE_COLUMN:
        return age_groups(values, age_bins)
    text = pd.Series(values, dtype=object).map(lambda v: "" if v is None or v != v else str(v).strip())
    return text.where(text != "", UNKNOWN).to_numpy(dtype=object)


def group_order(groups: np.ndarray, column: str, age_bins: Sequence[float] = DEFAULT_AGE_BINS) -> list[str]:
    """Groups present, in reading order: age bands by age, other values sorted; 'unknown' last."""
    present = set(groups.tolist())
    known = age_band_labels(check_age_bins(age_bins)) if column == AGE_COLUMN else sorted(present - {UNKNOWN})
    return [g for g in known if g in present] + ([UNKNOWN] if UNKNOWN in present else [])


def too_small(n: int, n_pos: int, min_class: int = MIN_CLASS) -> bool:
    """Fewer than `min_class` positives or negatives: no metric of such a group means much."""
    return n_pos < min_class or n - n_pos < min_class


def auc_vs_rest(y: np.ndarray, prob: np.ndarray, in_group: np.ndarray, n_boot: int = 1000,
                seed: int = 0) -> dict[str, Any]:
    """AUC(group) - AUC(rest) with an unpaired bootstrap: each side is resampled on its own (they share no image).

    Returns ``diff`` (point estimate), ``ci`` (95% percentile interval), ``p_value`` (two-sided, None without
    valid resamples) and ``n_valid`` (resamples where both AUCs are defined)."""
    y, prob = check_binary_inputs(y, prob)
    in_group = np.asarray(in_group, dtype=bool)
    sides = [(y[mask], prob[mask]) for mask in (in_group, ~in_group)]
    if any(len(side_y) == 0 for side_y, _ in sides):
        raise MedclfError("a group and its rest both need rows for an AUC difference")
    # AUC does not depend on a threshold; these helpers take one for the rates, which are not used here
    aucs = [point_metrics(side_y, side_p, 0.5)["roc_auc"] for side_y, side_p in sides]
    diff_star = np.empty(0)
    if n_boot > 0:
        # different seeds: the two sides are independent samples, so their resamples are drawn independently
        star = [bootstrap_metrics(side_y, side_p, 0.5, n_boot=n_boot, seed=seed + k, keys=("roc_auc",))["roc_auc"]
                for k, (side_y, side_p) in enumerate(sides)]
        diff_star = star[0] - star[1]
        diff_star = diff_star[~np.isnan(diff_star)]
    return {"diff": none_if_nan(aucs[0] - aucs[1]), "ci": percentile_interval(diff_star),
            "p_value": bootstrap_p_value(diff_star), "n_valid": int(diff_star.size)}


def subgroup_rows(y: Any, prob: Any, groups: Any, threshold: float, order: Sequence[str] | None = None,
                  n_boot: int = 1000, seed: int = 0, min_class: int = MIN_CLASS) -> list[dict[str, Any]]:
    """One row per group: ``group``, ``n``, ``n_pos``, ``too_small``, ``metrics`` (binary_metrics on the group's
    rows, None when too small) and ``vs_rest`` (`auc_vs_rest`, None when the group or its rest is too small)."""
    y, prob = check_binary_inputs(y, prob)
    groups = np.asarray(groups, dtype=object)
    if groups.shape != y.shape:
        raise MedclfError(f"one group label per row expected: {groups.shape[0]} labels for {len(y)} rows")
    rows = []
    for group in order if order is not None else sorted(set(groups.tolist())):
        mask = groups == group
        n, n_pos = int(mask.sum()), int(y[mask].sum())
        rest_n, rest_pos = len(y) - n, int(y.sum()) - n_pos
        small = too_small(n, n_pos, min_class)
        row: dict[str, Any] = {"group": str(group), "n": n, "n_pos": n_pos, "too_small": small,
                               "metrics": None, "vs_rest": None}
        if not small:
            row["metrics"] = binary_metrics(y[mask], prob[mask], threshold, n_boot=n_boot, seed=seed)
            if not too_small(rest_n, rest_pos, min_class):
                row["vs_rest"] = auc_vs_rest(y, prob, mask, n_boot=n_boot, seed=seed)
        rows.append(row)
    return rows


def flat_rows(column: str, rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """Table rows for a CSV: column, group, n, n_pos, too_small, tp, fp, tn, fn, then each metric with its interval
    (`<key>`, `<key>_lo`, `<key>_hi`), then the test against the rest; empty where not computed."""
    out = []
    for row in rows:
        flat: dict[str, Any] = {"column": column, "group": row["group"], "n": row["n"], "n_pos": row["n_pos"],
                                "too_small": row["too_small"]}
        metrics, test = row["metrics"] or {}, row["vs_rest"] or {}
        flat.update({key: metrics.get(key) for key in ("tp", "fp", "tn", "fn")})
        for key in keys:
            lo, hi = ((metrics.get("ci") or {}).get(key) or (None, None))
            flat.update({key: metrics.get(key), f"{key}_lo": lo, f"{key}_hi": hi})
        lo, hi = test.get("ci") or (None, None)
        flat.update(auc_diff_vs_rest=test.get("diff"), auc_diff_lo=lo, auc_diff_hi=hi, p_value=test.get("p_value"))
        out.append(flat)
    return out
