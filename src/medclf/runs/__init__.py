"""The run layer: a run directory's layout (`RunDir`), an opened run (`Run`, `open_run`) and the one path from
images to probabilities (`Predictor`).

Names load on first use: `medclf.runs.layout` is imported by the package itself (it registers how a run folder
is recognised, see `medclf.outdirs`), and that must not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_MODULES = {
    "medclf.runs.layout": ("ENSEMBLE_FORMAT", "RunDir", "config_from_stored"),
    "medclf.runs.loading": ("Run", "check_labels", "open_checkpoint", "open_run",
                            "open_run_and_cache"),
    "medclf.runs.predictor": ("ENGINES", "LogProbs", "Prediction", "Predictor", "Probabilities", "decide",
                              "read_images"),
    "medclf.runs.graph": ("model_input",),
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from medclf.runs.graph import model_input
    from medclf.runs.layout import ENSEMBLE_FORMAT, RunDir, config_from_stored
    from medclf.runs.loading import Run, check_labels, open_checkpoint, open_run, open_run_and_cache
    from medclf.runs.predictor import ENGINES, LogProbs, Prediction, Predictor, Probabilities, decide, read_images


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'medclf.runs' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
