"""`medclf evaluate`: predict a split of a cache with a run, then write the table, metrics and plots."""

from __future__ import annotations

from pathlib import Path

import torch

from medclf.data.cache import Cache
from medclf.data.dataset import CacheDataset
from medclf.engine.device import pick_device
from medclf.engine.inference import predict_dataset, predictions_table
from medclf.ensemble import Ensemble, predict_ensemble_dataset
from medclf.errors import DataError, MedclfError
from medclf.evaluation.metrics import evaluate_predictions
from medclf.io import atomic_path
from medclf.runs import LoadedRun, load_run, run_cache_path


def evaluate_run(
    run_dir: str | Path,
    data: str | Path | None = None,
    split: str = "test",
    n_boot: int = 1000,
    device: str = "auto",
    progress: bool = True,
) -> dict:
    """Writes `predictions_<split>.csv`, `metrics_<split>.json` and plots into the run; returns the metrics.

    The threshold is the one chosen on validation at training time and stored in the checkpoint: it is applied
    unchanged here. An external cache (`data`) must have the same label names; its outputs get a `@<hash>` tag.
    """
    run_dir = Path(run_dir)
    dev = pick_device(device)
    run, cache = open_run_and_cache(run_dir, data, dev)
    dataset = split_dataset(cache, split)
    own = _same_cache(cache.path, run_cache_path(run_dir))
    tag = split if own else f"{split}@{cache.meta.get('content_hash', 'ext')[:8]}"

    tta_flip = bool(run.config.get("eval", {}).get("tta_flip", False))
    kw = dict(progress=progress, desc=f"evaluate {split}", tta_flip=tta_flip)
    if isinstance(run.model, Ensemble):  # one pass gives the combined probabilities and the members' spread
        probs, spread = predict_ensemble_dataset(run.model, run.contract, dataset, dev, **kw)
    else:
        probs, spread = predict_dataset(run.model, run.contract, dataset, dev, **kw), None
    table = predictions_table(dataset, probs, run.contract, split, run.name)
    if spread is not None:
        table["std"] = spread  # member disagreement: std of the members' positive-class probabilities
    with atomic_path(run_dir / f"predictions_{tag}.csv") as tmp:
        table.to_csv(tmp, index=False)
    # also writes metrics.json for the test split; the threshold was chosen on validation at training time
    metrics = evaluate_predictions(table, run.contract.threshold, run_dir, tag, n_boot=n_boot,
                                   positive_index=run.contract.positive_index, label_names=run.contract.label_names)
    return metrics


def open_run_and_cache(run_dir: Path, data: str | Path | None, device: torch.device) -> tuple[LoadedRun, Cache]:
    """A run and the cache to run it on: its own (from data_summary.json) unless `data` names another."""
    run = load_run(run_dir, device)
    cache_path = Path(data) if data else run_cache_path(run_dir)
    if cache_path is None:
        raise MedclfError(f"{run_dir}: no data_summary.json naming its cache; pass --data CACHE")
    cache = Cache.open(cache_path)
    check_labels(cache, run.contract.label_names, cache_path)
    return run, cache


def split_dataset(cache: Cache, split: str) -> CacheDataset:
    dataset = CacheDataset(cache, split=split)
    if len(dataset) == 0:
        raise DataError(f"{cache.path}: split '{split}' is empty")
    return dataset


def check_labels(cache: Cache, label_names: list[str], cache_path: Path) -> None:
    if list(cache.label_names) != list(label_names):
        raise DataError(
            f"{cache_path}: labels {list(cache.label_names)} differ from the model's {list(label_names)}"
        )


def _same_cache(a: Path, b: Path | None) -> bool:
    return b is not None and Path(a).resolve() == Path(b).resolve()
