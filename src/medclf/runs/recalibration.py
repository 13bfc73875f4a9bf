"""A recalibrated run's record (`recalibration.json`, written by `medclf recalibrate`) and the rule that keeps
its fitting images out of its evaluation: figures measured on the images a threshold was fitted on would be
optimistic, so `evaluate` leaves them out and says how many."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medclf.errors import DataError
from medclf.io import read_json
from medclf.runs.layout import RunDir

if TYPE_CHECKING:
    from medclf.data.cache import Cache
    from medclf.data.dataset import CacheDataset


def recalibration_record(run_dir: str | Path | RunDir) -> dict[str, Any] | None:
    """recalibration.json of a run, or None when `recalibrate` did not make it."""
    rd = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    return read_json(rd.recalibration_path) if rd.recalibration_path.is_file() else None


def fitted_on(record: dict[str, Any], cache: Cache) -> bool:
    """True when `cache` is the one the run was recalibrated on (same content hash, else same folder)."""
    digest = cache.meta.get("content_hash")
    if record.get("cache_hash") and digest:
        return record["cache_hash"] == digest
    return Path(record["cache"]).resolve() == Path(cache.path).resolve()


def exclude_fitted(rd: RunDir, cache: Cache, dataset: CacheDataset) -> tuple[CacheDataset, str | None]:
    """`dataset` without the images the run was recalibrated on, and a note saying so (None when none were
    left out). Refused when nothing is left."""
    from medclf.data.dataset import CacheDataset

    record = recalibration_record(rd)
    if record is None or not fitted_on(record, cache):
        return dataset, None
    keep = ~np.isin(dataset.ids, np.asarray(record["ids"], dtype=str))
    dropped = int((~keep).sum())
    if dropped == 0:
        return dataset, None
    if not keep.any():
        raise DataError(f"{cache.path}: every one of these {dropped} images was used to recalibrate {rd.path} "
                        "(recalibration.json); evaluate it on images it was not fitted on")
    note = (f"{dropped} image(s) left out: {rd.path.name} was recalibrated on them (recalibration.json); "
            f"figures are on the other {int(keep.sum())}")
    return CacheDataset(cache, indices=dataset.indices[keep]), note
