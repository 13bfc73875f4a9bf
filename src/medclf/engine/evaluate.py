"""`medclf evaluate`: predict a split of a cache with a run, then write the table, metrics and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from medclf.data.cache import Cache
from medclf.data.dataset import CacheDataset
from medclf.device import pick_device
from medclf.errors import DataError
from medclf.evaluation.metrics import binary_metrics
from medclf.io import atomic_path, write_json
from medclf.runs import Prediction, Predictor, RunDir, is_own_cache, open_run_and_cache


def evaluate_run(
    run_dir: str | Path,
    data: str | Path | None = None,
    split: str = "test",
    n_boot: int = 1000,
    device: str = "auto",
    progress: bool = True,
    engine: str = "torch",
) -> dict:
    """Writes `predictions_<split>.csv`, `metrics_<split>.json` and plots into the run; returns the metrics.

    The threshold is the one chosen on validation at training time and stored in the checkpoint: it is applied
    unchanged here, to probabilities computed exactly as they were then (the run's Predictor, test-time
    augmentation included). An external cache (`data`) must have the same label names; its outputs get a
    `@<hash>` tag.
    """
    run, cache = open_run_and_cache(run_dir, data, pick_device(device))
    dataset = split_dataset(cache, split)
    tag = split if is_own_cache(run, cache.path) else f"{split}@{cache.meta.get('content_hash', 'ext')[:8]}"
    predictor = run.predictor(engine=engine)
    prediction = predictor.predict_dataset(dataset, progress=progress, desc=f"evaluate {split}")
    table = predictions_table(dataset, prediction, predictor, split)
    with atomic_path(run.dir.predictions(tag)) as tmp:
        table.to_csv(tmp, index=False)
    return write_evaluation(table, run.contract.threshold, run.dir, tag, n_boot=n_boot,
                            positive_index=run.contract.positive_index, label_names=run.contract.label_names)


def predictions_table(dataset: CacheDataset, prediction: Prediction, predictor: Predictor, split: str) -> pd.DataFrame:
    """The predictions table of DESIGN.md: `id,label,prob,predicted,threshold,split,model` (+ `std` for ensembles,
    `prob_<class>` when K > 2, `ood,ood_score` when the run has a detector). `label` is the ground truth (class
    index), `predicted` the class called at `threshold`; `predict`'s CSV uses the same names."""
    columns = predictor.columns(prediction)
    head = pd.DataFrame({"id": dataset.ids, "label": dataset.labels})
    table = pd.concat([head, columns[["prob", "predicted", "threshold"]]], axis=1)
    table["split"], table["model"] = split, predictor.name
    rest = [c for c in columns.columns if c not in table.columns]
    return pd.concat([table, columns[rest]], axis=1)


def split_dataset(cache: Cache, split: str) -> CacheDataset:
    dataset = CacheDataset(cache, split=split)
    if len(dataset) == 0:
        raise DataError(f"{cache.path}: split '{split}' is empty")
    return dataset


def write_evaluation(pred_df: Any, threshold: float, run_dir: str | Path | RunDir, tag: str, n_boot: int = 1000,
                     positive_index: int = 1, label_names: Sequence[str] | None = None, seed: int = 0) -> dict[str, Any]:
    """Metrics and plots for one predictions table (columns ``label,prob``; all rows are used).

    Writes ``metrics_<tag>.json`` (the binary_metrics dict plus ``split``, ``positive_index`` and ``n_boot``) and
    the confusion, ROC, PR and calibration plots into the run. A test split (``test`` or ``test@<cachehash8>``)
    also writes ``metrics.json``, so it holds the last evaluated test split. Returns the metrics dict.
    """
    from medclf.evaluation import plots  # matplotlib is only needed here

    rd = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    rd.metrics(tag)  # checks the tag before any work
    y, prob = labelled_arrays(pred_df, positive_index)
    metrics = binary_metrics(y, prob, threshold, n_boot=n_boot, seed=seed)
    metrics.update(split=tag, positive_index=int(positive_index), n_boot=int(n_boot))
    write_json(rd.metrics(tag), metrics)
    if tag.split("@")[0] == "test":
        write_json(rd / RunDir.METRICS, metrics)
    names = positive_negative_names(label_names, positive_index)
    plots.plot_confusion(metrics["tp"], metrics["fp"], metrics["fn"], metrics["tn"], rd.plot("confusion", tag), names,
                         title=f"{tag} (threshold {threshold:.3g})")
    plots.plot_roc(y, prob, rd.plot("roc", tag), threshold=threshold, title=tag)
    plots.plot_pr(y, prob, rd.plot("pr", tag), threshold=threshold, title=tag)
    plots.plot_calibration(y, prob, rd.plot("calibration", tag), title=tag)
    return metrics


def labelled_arrays(pred_df: Any, positive_index: int) -> tuple[np.ndarray, np.ndarray]:
    """(0/1 truth, positive probability) from a predictions table; every row must carry a label."""
    missing = [c for c in ("label", "prob") if c not in pred_df.columns]
    if missing:
        raise DataError(f"predictions table lacks column(s) {', '.join(missing)}")
    unlabelled = int(pred_df["label"].isna().sum())
    if unlabelled:
        raise DataError(f"predictions table has {unlabelled} row(s) without a label; metrics need labels")
    y = (pred_df["label"].to_numpy() == positive_index).astype(np.int8)
    return y, pred_df["prob"].to_numpy(dtype=np.float64)


def positive_negative_names(label_names: Sequence[str] | None, positive_index: int) -> tuple[str, str]:
    if not label_names or not 0 <= positive_index < len(label_names):
        return ("positive", "negative")
    positive = str(label_names[positive_index])
    if len(label_names) == 2:
        return (positive, str(label_names[1 - positive_index]))
    return (positive, f"not {positive}")
