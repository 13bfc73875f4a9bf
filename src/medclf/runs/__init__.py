"""The run layer: a run directory's layout (`RunDir`), an opened run (`Run`, `open_run`) and the one path from
images to probabilities (`Predictor`)."""

from medclf.runs.layout import ENSEMBLE_FORMAT, RunDir, config_from_stored
from medclf.runs.loading import Run, check_labels, is_own_cache, open_checkpoint, open_run, open_run_and_cache
from medclf.runs.predictor import ENGINES, LogProbs, Prediction, Predictor, decide, read_images

__all__ = ["ENGINES", "ENSEMBLE_FORMAT", "LogProbs", "Prediction", "Predictor", "Run", "RunDir", "check_labels",
           "config_from_stored", "decide", "is_own_cache", "open_checkpoint", "open_run", "open_run_and_cache",
           "read_images"]
