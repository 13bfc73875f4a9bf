"""Which class (or label) a map is drawn for: `medclf explain --target NAME`, or the task's default.

Defaults: binary -> the positive class (a map of "pneumonia" whatever the call, as explain has always drawn);
multiclass -> the predicted class (argmax of the Predictor's probabilities: the map then explains the call the
model made); multilabel -> the most probable label (the finding the model is surest of). Shared by every
workflow that draws maps, so the rule is written once.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from medclf.errors import MedclfError
from medclf.tasks import TASKS


def target_index(name: str, label_names: Sequence[str]) -> int:
    """The index of class `name`, or a one-line error listing the valid names."""
    names = [str(n) for n in label_names]
    if name not in names:
        raise MedclfError(f"--target {name!r}: no such class; valid: {', '.join(names)}")
    return names.index(name)


def resolve_targets(probs: np.ndarray, label_names: Sequence[str], task: str, positive_index: int,
                    target: str | None = None) -> np.ndarray:
    """Per image (row of the N x K `probs`), the index of the class whose map is drawn: `target` for every image
    when named, else the task's default (module docstring)."""
    probs = np.atleast_2d(np.asarray(probs))
    if probs.shape[1] != len(label_names):
        raise MedclfError(f"{probs.shape[1]} probabilities per image for {len(label_names)} classes")
    if task not in TASKS:
        raise MedclfError(f"task {task!r}: valid: {', '.join(TASKS)}")
    if target is not None:
        return np.full(len(probs), target_index(target, label_names), dtype=np.int64)
    if task == "binary":
        return np.full(len(probs), int(positive_index), dtype=np.int64)
    return probs.argmax(axis=1).astype(np.int64)
