"""Choosing the operating threshold on validation predictions (then applied unchanged to test).

Candidate thresholds are the distinct predicted probabilities; an image is called positive when
``prob >= threshold``. Ties between equally good thresholds go to the highest one (fewest positive calls).

The threshold a run stores is never one of those scores: `operating_threshold` moves the chosen score down to
the midpoint between it and the next lower distinct validation score (`between_scores`). Every validation image
keeps the decision it had at the chosen score, and keeps it under any change of its probability smaller than
half that gap, so two inference paths that differ by a float step (ONNX vs eager, a numpy vs a torch sum, a
probability read back from CSV) cannot flip a decision.

`operating_threshold` is the safe rule training uses: a threshold is fitted to validation only when validation
holds at least `min_class` positives AND negatives (`eval.threshold_min_class`, 10 by default). With fewer, a
fitted threshold lands on one image's probability (2.5e-07, or 1.0, from a single positive), so the run keeps
DEFAULT_THRESHOLD instead, 0.5: the model's own decision (argmax of its two class probabilities), the point its
validation metrics were tracked at during training. (Not the class prior: a balanced sampler or class-weighted
loss already moves the probabilities away from it.) Either way the answer says why the threshold is what it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from medclf.errors import MedclfError
from medclf.evaluation.metrics import check_binary_inputs

THRESHOLD_METHODS = ("f1", "youden", "sensitivity")
DEFAULT_THRESHOLD = 0.5
SOURCE_DATA, SOURCE_DEFAULT = "validation", "default"


@dataclass(frozen=True)
class OperatingThreshold:
    """A threshold and why it is what it is: `source` is ``validation`` (fitted) or ``default`` (fallback)."""

    value: float
    source: str
    reason: str  # e.g. "f1 on 270 validation images (135 positives)", "default 0.5: validation has 1 positive (< 10)"


def operating_threshold(y_true: Any, prob: Any, method: str = "f1", target: float | None = None,
                        min_class: int = 10, split: str = "validation") -> OperatingThreshold:
    """`choose_threshold` when `split` has at least `min_class` positives and negatives, else DEFAULT_THRESHOLD."""
    if method not in THRESHOLD_METHODS:  # a typo fails whatever the split holds
        raise MedclfError(f"unknown threshold method {method!r}; choose one of {', '.join(THRESHOLD_METHODS)}")
    y, p = check_binary_inputs(y_true, prob)
    n_pos = int(y.sum())
    counts = {"positive": n_pos, "negative": len(y) - n_pos}
    min_class = max(1, int(min_class))  # a fitted threshold needs both classes, whatever the setting
    short = [count_text(n, word) for word, n in counts.items() if n < min_class]
    if short:
        return OperatingThreshold(DEFAULT_THRESHOLD, SOURCE_DEFAULT,
                                  f"default {DEFAULT_THRESHOLD:g}: {split} has {' and '.join(short)} (< {min_class})")
    value = between_scores(p, choose_threshold(y, p, method, target))
    how = f"sensitivity >= {target:g}" if method == "sensitivity" else method
    return OperatingThreshold(value, SOURCE_DATA,
                              f"{how} on {len(y)} {split} images ({count_text(n_pos, 'positive')})")


def between_scores(prob: Any, chosen: float) -> float:
    """The midpoint between `chosen` (one of the scores `prob`) and the next lower distinct score (0 when none
    is lower): the same calls as ``prob >= chosen`` on `prob`, with the largest margin to every score."""
    p = np.asarray(prob, dtype=np.float64).reshape(-1)
    lower = p[p < chosen]
    below = float(lower.max()) if lower.size else 0.0
    return float(below + (float(chosen) - below) / 2.0)


def count_text(n: int, word: str) -> str:
    """'1 positive', '4 positives'."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def choose_threshold(y_true: Any, prob: Any, method: str = "f1", target: float | None = None) -> float:
    """Threshold that maximises F1 (``f1``), Youden's J = sensitivity + specificity - 1 (``youden``), or the
    highest threshold whose sensitivity reaches `target` (``sensitivity``)."""
    if method not in THRESHOLD_METHODS:
        raise MedclfError(f"unknown threshold method {method!r}; choose one of {', '.join(THRESHOLD_METHODS)}")
    y, p = check_binary_inputs(y_true, prob)
    if y.min() == y.max():
        raise MedclfError("choosing a threshold needs both classes in the labels, found only one")
    if method == "f1":
        return _f1_threshold(y, p)
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    # thresholds come highest first; the first is +inf (nothing called positive) and is never returned
    fpr, tpr, thr = fpr[1:], tpr[1:], thr[1:]
    if method == "youden":
        return float(thr[_first_best(tpr - fpr)])
    if target is None or not 0.0 < float(target) <= 1.0:
        raise MedclfError(f"method 'sensitivity' needs a target in (0, 1], got {target!r}")
    # tpr rises as the threshold falls, so the first reaching the target is the highest such threshold
    return float(thr[int(np.argmax(tpr >= float(target) - 1e-12))])


def _f1_threshold(y: np.ndarray, p: np.ndarray) -> float:
    precision, recall, thr = precision_recall_curve(y, p)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    # thresholds ascend here: reverse so the first best is the highest threshold among ties
    return float(thr[::-1][_first_best(f1[::-1])])


def _first_best(values: np.ndarray) -> int:
    """Index of the first maximum, treating values within rounding error (1e-12) of it as ties."""
    return int(np.flatnonzero(values >= values.max() - 1e-12)[0])
