"""medclf: prepare, train, evaluate, explain and serve medical image classifiers.

The public API, for notebooks and scripts (each CLI command is a thin shell over one of these)::

    import medclf
    medclf.prepare_medmnist("pneumoniamnist.npz", "cache/pmnist")          # or prepare_rsna / prepare_folder
    cfg = medclf.load_config("pneumoniamnist_cpu", ["train.epochs=3"])
    run_dir = medclf.train(cfg, "cache/pmnist", "runs/pmnist")
    metrics = medclf.evaluate(run_dir, split="val")                       # metrics.json as a dict
    predictor = medclf.open_run(run_dir).predictor()                      # the run's one path to probabilities
    table = predictor.predict_files(["a.png", "b.dcm"])                   # pandas DataFrame
    table = medclf.predict(run_dir, ["new_studies/"])                     # the same, from a run folder
    medclf.recalibrate(run_dir, "cache/site_b", "runs/site_b")            # re-fit threshold/temperature locally

Names load on first use, so `import medclf` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Light (no torch): registers how run, ensemble and study folders are recognised (medclf.outdirs), so every
# entry point, a cache's `prepare` included, tells a run folder from a stranger's whatever it imported first.
import medclf.runs.layout  # noqa: E402,F401

_EXPORTS = {
    "prepare_rsna": "medclf.data.prepare", "prepare_medmnist": "medclf.data.prepare",
    "prepare_folder": "medclf.data.prepare", "Cache": "medclf.data.cache",
    "Config": "medclf.config", "load_config": "medclf.config",
    "train": "medclf.engine.train", "evaluate": ("medclf.engine.evaluate", "evaluate_run"),
    "predict": ("medclf.engine.predict", "predict_files"), "explain": ("medclf.explain.run", "explain_files"),
    "explain_image": ("medclf.explain.run", "explain_batch"),
    "train_ensemble": "medclf.ensemble", "recalibrate": "medclf.recalibrate", "open_run": "medclf.runs",
    "Run": "medclf.runs", "RunDir": "medclf.runs",
    "Predictor": "medclf.runs", "Prediction": "medclf.runs",
    "MedclfError": "medclf.errors", "ConfigError": "medclf.errors", "DataError": "medclf.errors",
}
__all__ = sorted(_EXPORTS) + ["__version__"]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily
    from medclf.config import Config, load_config
    from medclf.data.cache import Cache
    from medclf.data.prepare import prepare_folder, prepare_medmnist, prepare_rsna
    from medclf.engine.evaluate import evaluate_run as evaluate
    from medclf.engine.predict import predict_files as predict
    from medclf.engine.train import train
    from medclf.ensemble import train_ensemble
    from medclf.errors import ConfigError, DataError, MedclfError
    from medclf.explain.run import explain_batch as explain_image
    from medclf.explain.run import explain_files as explain
    from medclf.recalibrate import recalibrate
    from medclf.runs import Prediction, Predictor, Run, RunDir, open_run


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'medclf' has no attribute {name!r}")
    module, attr = target if isinstance(target, tuple) else (target, name)
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
