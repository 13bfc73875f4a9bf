"""What a task means: one `Task` class per task type (binary, multiclass, multilabel), built from a run's
contract (`task_for`), a cache (`task_for_cache`) or a metrics file (`task_for_metrics`).

A Task owns every task-specific step: logits to probabilities and back, labels to a truth matrix, choosing the
operating threshold(s) on validation and applying them (`calls`, `decisions`), the predictions-table columns,
the metrics entry and its plots, the temperature (one, or one per label), the conformal refer band and the
curves a site is checked with, the loss family, the default class a map explains, what "positive" means for
subgroups, attacks and OOD, and the service's answer. Workflows call it; they do not ask which task they have.

The truth's storage (class indices or bit masks) is the bottom layer, medclf.labelsets, re-exported here.
"""

from __future__ import annotations

from typing import Any, Sequence

from medclf.labelsets import (
    MAX_LABELS,
    NO_FINDING,
    TASKS,
    check_masks,
    encode_multi_hot,
    label_counts,
    label_set_name,
    label_texts,
    multi_hot,
    rarest_label,
    task_of,
)
from medclf.tasks.base import ATTACK_ROW_KEYS, PROB_EPS, ChosenThresholds, Task, ThresholdRule, checked_threshold
from medclf.tasks.multilabel import MultilabelTask
from medclf.tasks.single import BinaryTask, MulticlassTask, SingleLabelTask

# one class per task type: the only place a task's name picks its behaviour
TASK_CLASSES: dict[str, type[Task]] = {"binary": BinaryTask, "multiclass": MulticlassTask,
                                       "multilabel": MultilabelTask}

__all__ = ["ATTACK_ROW_KEYS", "BinaryTask", "ChosenThresholds", "MAX_LABELS", "MulticlassTask", "MultilabelTask",
           "NO_FINDING", "SingleLabelTask", "TASKS", "TASK_CLASSES", "Task", "ThresholdRule", "check_masks",
           "checked_threshold", "encode_multi_hot", "label_counts", "label_set_name", "label_texts", "make_task",
           "multi_hot", "rarest_label", "task_class", "task_for", "task_for_cache", "task_for_metrics", "task_of"]


def task_class(name: str | None, label_names: Sequence[str] = ("", "")) -> type[Task]:
    """The Task class of task `name` (None: the one the class count implies, as for old caches)."""
    return TASK_CLASSES[task_of(label_names, name)]


def make_task(name: str | None, label_names: Sequence[str], positive_index: int = 1, threshold: float = 0.5,
              thresholds: Sequence[float] | None = None) -> Task:
    """The Task of task `name` over `label_names` with its operating threshold(s)."""
    return task_class(name, label_names)(label_names, positive_index, threshold, thresholds)


def task_for(contract: Any) -> Task:
    """The Task a run's DataContract describes (its label names, positive class and thresholds)."""
    return make_task(contract.task, contract.label_names, contract.positive_index, contract.threshold,
                     contract.thresholds)


def task_for_cache(cache: Any) -> Task:
    """The Task of a prepared cache (no thresholds yet)."""
    return make_task(cache.task, cache.label_names, cache.positive_index)


def task_for_metrics(metrics: dict[str, Any], label_names: Sequence[str] = ()) -> Task:
    """The Task a metrics file was written by: its `task`, else the keys it holds (older files)."""
    declared = metrics.get("task") or next((k for k in ("multilabel", "multiclass") if k in metrics), "binary")
    names = list(label_names or metrics.get("label_names") or ())
    return TASK_CLASSES[declared](names, int(metrics.get("positive_index", 1)), float(metrics.get("threshold") or 0.5))
