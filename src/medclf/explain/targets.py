"""Which class (or label) a map is drawn for: `medclf explain --target NAME`, or the task's default.

Defaults (`Task.default_targets`): binary -> the positive class (a map of "pneumonia" whatever the call, as
explain has always drawn); multiclass -> the predicted class (argmax of the Predictor's probabilities: the map
then explains the call the model made); multilabel -> the most probable finding (the one the model is surest
of, the one the service's bar shows). `map_targets` is the one function `explain` and the web viewer call.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from medclf.errors import MedclfError
from medclf.tasks import Task, make_task


def target_index(name: str, label_names: Sequence[str]) -> int:
    """The index of class `name`, or a one-line error listing the valid names."""
    names = [str(n) for n in label_names]
    if name not in names:
        raise MedclfError(f"--target {name!r}: no such class; valid: {', '.join(names)}")
    return names.index(name)


def map_targets(task: Task, probs: np.ndarray, target: str | None = None) -> np.ndarray:
    """Per image (row of the N x K `probs`), the index of the class whose map is drawn: `target` (a class name)
    for every image when named, else the task's default (module docstring)."""
    index = None if target is None else target_index(target, task.label_names)
    return task.explain_targets(probs, index)


def resolve_targets(probs: np.ndarray, label_names: Sequence[str], task: str, positive_index: int,
                    target: str | None = None) -> np.ndarray:
    """`map_targets` for the Task of name `task` over `label_names`."""
    try:
        chosen = make_task(task, label_names, positive_index)
    except ValueError as err:  # an unknown task name
        raise MedclfError(str(err)) from None
    return map_targets(chosen, probs, target)
