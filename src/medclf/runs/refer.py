"""The conformal refer band as predictions-table columns (a run whose contract holds `conformal`, issue 21):
`prediction_set`, the plausible classes joined by `|` (multilabel: the labels whose status is uncertain), and
`refer`, True when the set is not exactly one class (any label's, for multilabel): "uncertain - refer".
The Task makes them (`Task.refer_columns`)."""

from __future__ import annotations

REFER_TEXT = "uncertain — refer"
REFER_COLUMNS = ["refer", "prediction_set"]
