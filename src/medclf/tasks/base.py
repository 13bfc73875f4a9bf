"""What every task does the same way, and the one place a probability is compared with a threshold.

A `Task` scores some columns of the N x K probabilities against operating thresholds: the positive class for a
single-label task, every label for a multilabel one (`scored`). Everything below is written once on top of that;
the subclasses (medclf.tasks.single, medclf.tasks.multilabel) say what differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from scipy.special import log_softmax

from medclf.errors import MedclfError
from medclf.evaluation.caveats import metric_warnings, threshold_warning
from medclf.evaluation.conformal import class_scores, conformal_quantile
from medclf.evaluation.metrics import binary_metrics, column_counts
from medclf.evaluation.temperature import enough_per_class, fit_one_temperature
from medclf.evaluation.thresholds import OperatingThreshold, operating_threshold
from medclf.labelsets import ClassIndices

# The one floor (and, as 1 - PROB_EPS, ceiling) for a probability before a log or a logit: log(0) would give
# -inf logits (and infinite gradients for attacks). Logits are taken in float64, where 1 - 1e-12 exists
# (float32 rounds it to 1.0).
PROB_EPS = 1e-12

# the figures each row of `medclf attack` keeps (robustness.json / .csv)
ATTACK_ROW_KEYS = ("accuracy", "f1", "roc_auc", "recall", "specificity", "precision", "pr_auc")


def softmax_nll(logits: np.ndarray, y: np.ndarray, t: float) -> float:
    """Mean negative log-likelihood of class indices `y` under softmax(logits / t)."""
    return float(-log_softmax(logits / t, axis=1)[np.arange(len(y)), y].mean())


def sigmoid_nll(logit: np.ndarray, y: np.ndarray, t: float) -> float:
    """Mean binary cross-entropy of 0/1 `y` under sigmoid(logit / t), computed stably."""
    z = logit / t
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


@dataclass(frozen=True)
class ThresholdRule:
    """How operating thresholds are chosen on validation (`eval.threshold`, `eval.target_sensitivity`,
    `eval.threshold_min_class`; `seed` for the bootstrap behind the warnings)."""

    method: str = "f1"
    target: float | None = None
    min_class: int = 10
    seed: int = 0
    split: str = "validation"  # what the reasons and warnings call the images it is applied to

    @classmethod
    def from_config(cls, cfg: Any) -> ThresholdRule:
        return cls(cfg.eval.threshold, cfg.eval.target_sensitivity, cfg.eval.threshold_min_class, cfg.train.seed)


@dataclass
class ChosenThresholds:
    """One operating threshold per scored column, why they are what they are, and the validation warnings."""

    values: list[float]
    source: str
    reason: str
    warnings: list[str] = field(default_factory=list)


def checked_threshold(y: np.ndarray, prob: np.ndarray, rule: ThresholdRule) -> tuple[OperatingThreshold, list[str]]:
    """One column's threshold by the safe rule (`operating_threshold`: fitted only on enough positives and
    negatives, and placed between two validation scores), and why it, or the figures behind it, may mean nothing."""
    chosen = operating_threshold(y, prob, method=rule.method, target=rule.target, min_class=rule.min_class,
                                 split=rule.split)
    # a few hundred resamples show whether an interval collapses; the full count is evaluate's job
    val_metrics = binary_metrics(y, prob, chosen.value, n_boot=200, seed=rule.seed)
    fallback = threshold_warning(chosen.source, chosen.reason)
    warnings = [f"{rule.split}: {w}" for w in metric_warnings(val_metrics, rule.min_class)]
    return chosen, ([fallback] if fallback else []) + warnings


class Task:
    """What a task type means, for one label set and its operating threshold(s). Build it with
    `medclf.tasks.task_for(contract)` (or `make_task`); workflows call it instead of asking which task they have."""

    name: ClassVar[str]
    coding: ClassVar[Any] = ClassIndices  # how the truth is stored (medclf.labelsets)

    def __init__(self, label_names: Sequence[str] | None, positive_index: int = 1, threshold: float = 0.5,
                 thresholds: Sequence[float] | None = None) -> None:
        self.label_names: list[str] = [str(n) for n in label_names or ()]  # [] for a table scored without names
        self.positive_index = int(positive_index)
        self.threshold = float(threshold)
        self.stored_thresholds = None if thresholds is None else [float(t) for t in thresholds]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label_names}, positive_index={self.positive_index})"

    @property
    def k(self) -> int:
        return len(self.label_names)

    # ------------------------------------------------------------------ logits <-> probabilities
    @staticmethod
    def probabilities(logits: torch.Tensor) -> torch.Tensor:
        """`B x K` logits -> `B x K` float32 probabilities."""
        raise NotImplementedError

    @staticmethod
    def logits(probs: torch.Tensor) -> torch.Tensor:
        """Logits whose `probabilities` are `probs` (an ensemble or the test-time flip combines probabilities)."""
        raise NotImplementedError

    @staticmethod
    def log_odds(logits: torch.Tensor, index: int) -> torch.Tensor:
        """The log-odds log(p / (1 - p)) of column `index` of `B x K` (or `K`) logits: what a map explains."""
        raise NotImplementedError

    # ------------------------------------------------------------------ truth
    def label_texts(self, labels: Any) -> list[str]:
        return self.coding.texts(labels, self.label_names)

    def label_counts(self, labels: Any) -> np.ndarray:
        return self.coding.counts(labels, self.k)

    def truth(self, labels: Any) -> np.ndarray:
        """N x S 0/1 (int8) truth of the scored columns (`scored`)."""
        raise NotImplementedError

    def macro_truth(self, labels: Any) -> np.ndarray:
        """The truth a macro (one-vs-rest) AUC reads: class indices, or a multilabel 0/1 matrix."""
        return np.asarray(labels)

    def positive(self, labels: Any, index: int | None = None) -> np.ndarray:
        """N booleans: the image holds class/finding `index`, or by default is positive for the task (the
        positive class; any finding) -- what subgroups, attacks, OOD and `explain --score` count as positive."""
        raise NotImplementedError

    # ------------------------------------------------------------------ thresholds and decisions
    @property
    def scored(self) -> list[int]:
        """The probability columns that are compared with an operating threshold."""
        raise NotImplementedError

    def operating_thresholds(self) -> np.ndarray:
        """One threshold per scored column."""
        raise NotImplementedError

    def threshold_of(self, index: int) -> float:
        """The operating threshold of probability column `index` (a scored column)."""
        return float(self.operating_thresholds()[self.scored.index(int(index))])

    def calls(self, probs: np.ndarray) -> np.ndarray:
        """N x S booleans: each scored probability at or above its operating threshold. The only `>=` between a
        probability and a threshold in medclf: thresholds sit between validation scores (evaluation.thresholds)."""
        return np.atleast_2d(probs)[:, self.scored] >= self.operating_thresholds()

    def operating_counts(self, labels: Any, probs: np.ndarray) -> dict[str, list[int]]:
        """Per scored column (by name): [tp, fn, tn, fp] of its calls at the operating threshold."""
        tp, fp, fn, tn = column_counts(self.truth(labels), self.calls(probs))
        return {self.label_names[c]: [int(tp[j]), int(fn[j]), int(tn[j]), int(fp[j])]
                for j, c in enumerate(self.scored)}

    def choose_thresholds(self, labels: Any, probs: np.ndarray, rule: ThresholdRule) -> ChosenThresholds:
        """The operating threshold of each scored column, chosen on validation `labels` / `probs` (N x K)."""
        y, p = self.truth(labels), np.atleast_2d(probs)[:, self.scored]
        chosen, warnings = zip(*(checked_threshold(y[:, j], p[:, j], rule) for j in range(len(self.scored))))
        return self.combine_choices(list(chosen), list(warnings))

    def combine_choices(self, chosen: list[OperatingThreshold], warnings: list[list[str]]) -> ChosenThresholds:
        raise NotImplementedError

    def store_thresholds(self, contract: Any, chosen: ChosenThresholds) -> None:
        """Write `chosen` into a DataContract (and into this Task)."""
        raise NotImplementedError

    def threshold_fields(self, chosen: ChosenThresholds) -> dict[str, Any]:
        """The `threshold` (and `thresholds`) keys of ensemble.json for `chosen`."""
        raise NotImplementedError

    def threshold_entry(self) -> float | list[float] | None:
        """The threshold(s) this task stores (a member's entry in ensemble.json)."""
        raise NotImplementedError

    def decisions(self, probs: np.ndarray) -> list[str]:
        """The call for each row of `probs` as text (a class name; the labels called, joined by `|`)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ predictions table
    def lead_column_names(self) -> list[str]:
        """The per-image columns after `id,label` (and before `split,model`) of the predictions table."""
        raise NotImplementedError

    def lead_columns(self, probs: np.ndarray) -> dict[str, Any]:
        raise NotImplementedError

    def class_column_names(self) -> list[str]:
        """`prob_<class>` columns that follow the lead ones (a K-class run); none by default."""
        return []

    def class_columns(self, probs: np.ndarray) -> dict[str, Any]:
        return {}

    def truth_columns(self, labels: Any) -> dict[str, Any]:
        """Columns the predictions table adds after `label` to spell the truth out (none by default)."""
        return {}

    def spread(self, member_probs: np.ndarray) -> np.ndarray:
        """Members' disagreement per image from `M x N x K` probabilities (population std, ddof=0)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ metrics
    def metrics_entry(self, table: Any, split: str, n_boot: int = 1000, seed: int = 0, min_class: int = 10,
                      threshold_reason: str | None = None, notes: Sequence[str] = ()) -> dict[str, Any]:
        """The metrics dict (metrics_<split>.json) of a predictions table of split (tag) `split`."""
        raise NotImplementedError

    def plot_evaluation(self, table: Any, metrics: dict[str, Any], path_of: Any, title: str) -> None:
        """The evaluation plots of a predictions table; `path_of(kind)` names each file."""
        raise NotImplementedError

    def validation_row(self, labels: np.ndarray, probs: np.ndarray, loss_fn: Any, device: Any) -> dict[str, Any]:
        """`val_loss`, `val_auc`, `val_f1`, `val_accuracy` of one validation pass (calls at 0.5)."""
        raise NotImplementedError

    def validation_auc(self, labels: np.ndarray, probs: np.ndarray) -> float | None:
        """An ensemble member's validation ROC AUC (None when undefined)."""
        raise NotImplementedError

    def auc_with_ci(self, labels: np.ndarray, probs: np.ndarray, n_boot: int = 1000) -> dict[str, Any]:
        """`{roc_auc, ci}`: metrics.json's headline ROC AUC (the positive class against the rest; a multilabel
        run's macro AUC) with its bootstrap 95% interval."""
        raise NotImplementedError

    def headline(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """A metrics file's headline figures (`roc_auc`, `recall`, ... and `ci`) for tables and reports."""
        return metrics

    def macro_scope(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """The part of a metrics file that holds `ci.macro_roc_auc` ({} for a binary run)."""
        return {}

    def compared_classes(self, names: list[str]) -> list[str]:
        """The classes `compare` scores one by one (macro AUC); [] for a binary run."""
        return names

    # ------------------------------------------------------------------ calibration, decision curves, refer band
    @classmethod
    def tempered(cls, probs: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
        """`... x K` probabilities as they are with their logits divided by `temperature` (one value; one per label
        for multilabel): what the inference graph applies last (Guo et al. 2017)."""
        return cls.probabilities(cls.logits(probs.float()) / temperature)

    def _logits64(self, probs: np.ndarray) -> np.ndarray:
        return self.logits(torch.from_numpy(np.asarray(probs, dtype=np.float64))).numpy()

    def fit_temperature(self, labels: Any, probs: np.ndarray, min_class: int = 1) -> list[float]:
        """The temperature(s) minimising log-loss on labelled `probs` (medclf.evaluation.temperature); 1.0 where a
        class has fewer than `min_class` images. One for a softmax task."""
        y = np.asarray(labels, dtype=np.int64)
        z = self._logits64(probs)
        return [fit_one_temperature(partial(softmax_nll, z, y)) if enough_per_class(y, self.k, min_class) else 1.0]

    def log_loss(self, labels: Any, probs: np.ndarray) -> float:
        """Mean log-loss of `probs` against the truth."""
        return softmax_nll(self._logits64(probs), np.asarray(labels, dtype=np.int64), 1.0)

    @property
    def curve_columns(self) -> list[int]:
        """The columns with a calibration and a decision curve: the scored ones by default."""
        return self.scored

    def curves(self, labels: Any, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str], list[float | None]]:
        """(N x L 0/1 truth, N x L probabilities, L names, L operating thresholds or None) of `curve_columns`:
        each against the rest, at its threshold where it has one."""
        cols = self.curve_columns
        truth = np.stack([self.positive(labels, c) for c in cols], axis=1).astype(np.int8)
        at = [self.threshold_of(c) if c in self.scored else None for c in cols]
        names = [self.label_names[c] if c < self.k else str(c) for c in cols]  # a table scored without names
        return truth, np.atleast_2d(probs)[:, cols], names, at

    def plot_reliability(self, table: Any, path: Any, title: str) -> None:
        """The reliability diagram of each of `curve_columns` (one panel per class or label)."""
        from medclf.evaluation import plots  # matplotlib is only needed here

        truth, probs, names, _ = self.curves(table["label"].to_numpy(), self.table_probs(table))
        plots.plot_calibration(truth, probs, path, title=title, names=names)

    def table_probs(self, table: Any) -> np.ndarray:
        """The N x K probabilities of a predictions table (its `prob_<class>` columns)."""
        return table[[f"prob_{n}" for n in self.label_names]].to_numpy(dtype=np.float64)

    band_guarantee: ClassVar[str] = "per image, marginal over images"

    def fit_band(self, labels: Any, probs: np.ndarray, alpha: float, score: str = "lac") -> dict[str, Any]:
        """A split-conformal band (medclf.evaluation.conformal) on labelled probabilities: `alpha`, `score`, `qhat`
        (one; one per label for multilabel) and `n`."""
        y = np.asarray(labels, dtype=np.int64)
        s = class_scores(probs, score)[np.arange(len(y)), y]
        return {"alpha": float(alpha), "score": score, "qhat": [conformal_quantile(s, alpha)], "n": int(len(y))}

    def prediction_sets(self, probs: np.ndarray, band: dict[str, Any]) -> np.ndarray:
        """Booleans: N x K (class k plausible); multilabel N x K x 2 (absent, present plausible)."""
        return class_scores(probs, band["score"]) <= band["qhat"][0]

    def set_covers(self, sets: np.ndarray, labels: Any) -> np.ndarray:
        """Per image (multilabel: per image and label): is the truth in the set?"""
        y = np.asarray(labels, dtype=np.int64)
        return sets[np.arange(len(y)), y]

    @staticmethod
    def refer(sets: np.ndarray) -> np.ndarray:
        """Per image: "uncertain - refer" when a set (any label's) is not exactly one class."""
        return (sets.sum(axis=-1) != 1).reshape(len(sets), -1).any(axis=1)

    def set_members(self, sets: np.ndarray) -> np.ndarray:
        """N x K booleans of the names a set shows: the plausible classes (multilabel: the uncertain labels)."""
        return sets

    def refer_columns(self, probs: np.ndarray, band: dict[str, Any]) -> dict[str, list]:
        """`refer` and `prediction_set` (names joined by `|`) for each row of `probs`."""
        sets = self.prediction_sets(probs, band)
        names = np.asarray(self.label_names)
        return {"refer": self.refer(sets).tolist(),
                "prediction_set": ["|".join(names[row]) for row in self.set_members(sets)]}

    # ------------------------------------------------------------------ training options and losses
    def check_options(self, cfg: Any, where: Any) -> None:
        """Refuse options defined for another kind of task, naming what to change."""
        raise NotImplementedError

    def create_loss(self, loss_cfg: Any, train_labels: np.ndarray) -> torch.nn.Module:
        """The configured loss (loss.name in this task's family), weighed by the training split's counts."""
        raise NotImplementedError

    def check_subgroups(self, by: Sequence[str], where: Any) -> None:
        """Refuse `--by` where subgroups are not defined (nothing to refuse by default)."""

    # ------------------------------------------------------------------ explain, attack, serve
    def explain_targets(self, probs: np.ndarray, target: int | None = None) -> np.ndarray:
        """Per image, the class whose map is drawn: `target` when given, else the task's default."""
        probs = np.atleast_2d(np.asarray(probs))
        if probs.shape[1] != self.k:
            raise MedclfError(f"{probs.shape[1]} probabilities per image for {self.k} classes")
        if target is not None:
            return np.full(len(probs), int(target), dtype=np.int64)
        return self.default_targets(probs).astype(np.int64)

    def default_targets(self, probs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def caption_mark(self, target: int, prob: float) -> str:
        """What an overlay's caption adds after `name p=...` (binary: `+` when the positive class is called)."""
        return ""

    def explain_columns(self, columns: list[str]) -> list[str]:
        """explanations.csv's columns: `columns`, plus `target` where the drawn class varies."""
        return [*columns, "target"]

    def attack_target(self, labels: torch.Tensor) -> torch.Tensor:
        """The truth an attack's loss reads (class indices; a 0/1 matrix for multilabel)."""
        return labels

    def attack_rows(self, labels: np.ndarray, probs: dict[float, np.ndarray], n_boot: int,
                    seed: int) -> tuple[list[dict], int]:
        """One robustness row per eps and the number of positive images."""
        raise NotImplementedError

    def attack_point(self) -> dict[str, Any]:
        """The operating point a robustness entry records."""
        return {"threshold": float(self.threshold)}

    @property
    def example_class(self) -> int | None:
        """The class whose probability the attack-examples figure shows (None: no figure)."""
        return self.positive_index

    def focus(self, probs: np.ndarray) -> int:
        """The class the service's bar shows for one image's K probabilities."""
        return self.positive_index

    def serve_fields(self, probs: np.ndarray, columns: dict[str, Any]) -> dict[str, Any]:
        """The task's part of the service's answer for one image."""
        raise NotImplementedError
