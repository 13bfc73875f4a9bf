"""The conformal refer band as predictions-table columns (a run whose contract holds `conformal`, issue 21):
`prediction_set`, the plausible classes joined by `|` (multilabel: the labels whose status is uncertain), and
`refer`, True when the set is not exactly one class (any label's, for multilabel): "uncertain - refer"."""

from __future__ import annotations

import numpy as np

from medclf.contract import DataContract
from medclf.evaluation.conformal import prediction_sets, refer

REFER_TEXT = "uncertain — refer"
REFER_COLUMNS = ["refer", "prediction_set"]


def refer_columns(probs: np.ndarray, contract: DataContract) -> dict[str, list]:
    """`refer` and `prediction_set` per row of the run's `N x K` probabilities."""
    sets = prediction_sets(probs, contract.conformal, contract.task)
    names = np.asarray(contract.label_names)
    if contract.multilabel:  # a label is uncertain when its set is not exactly one status
        uncertain = sets.sum(axis=-1) != 1
        text = ["|".join(names[row]) for row in uncertain]
    else:
        text = ["|".join(names[row]) for row in sets]
    return {"refer": refer(sets, contract.task).tolist(), "prediction_set": text}
