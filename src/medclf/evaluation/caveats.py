"""Reasons a figure may mean nothing, as a pure function of a metrics dict.

A metrics dict (`binary_metrics`, i.e. metrics_<split>.json) already holds what these checks need from the
labels and probabilities: `n`, `n_pos`, `roc_auc` and the bootstrap intervals under `ci`. Working on the dict
rather than on the arrays lets the report check metrics files written before the warnings existed.
`train`, `evaluate`, the report and the web page all show the same sentences.
"""

from __future__ import annotations

from typing import Any, Mapping

from medclf.evaluation.thresholds import SOURCE_DEFAULT, count_text

MIN_CLASS = 10  # eval.threshold_min_class's default: fewer positives or negatives than this is "too few"


def metric_warnings(metrics: Mapping[str, Any], min_class: int = MIN_CLASS) -> list[str]:
    """Fewer than `min_class` positives or negatives, ROC AUC below 0.5, bootstrap intervals that collapse
    to a point; one sentence each, [] when the figures can be read as they are."""
    n, n_pos = int(metrics["n"]), int(metrics["n_pos"])
    found = []
    for count, word, figures in ((n_pos, "positive", "sensitivity, precision and F1"),
                                 (n - n_pos, "negative", "specificity")):
        if count < min_class:
            found.append(f"only {count_text(count, word)} (< {min_class}): {figures} and ROC AUC rest on too few "
                         "images to mean much")
    auc = metrics.get("roc_auc")
    if auc is not None and auc < 0.5:
        found.append(f"ROC AUC {auc:.3f} is below 0.5: the model ranks these images worse than chance")
    collapsed = [key for key, ci in (metrics.get("ci") or {}).items()
                 if ci and None not in ci and ci[0] == ci[1]]
    if collapsed:
        found.append(f"the 95% interval of {', '.join(collapsed)} collapses to a point: the bootstrap cannot show "
                     "how uncertain they are")
    return found


def threshold_warning(source: str | None, reason: str | None) -> str | None:
    """A sentence when the operating threshold is a fallback rather than fitted to validation, else None."""
    if source != SOURCE_DEFAULT:
        return None
    return f"the operating threshold is not fitted to data ({reason})"
