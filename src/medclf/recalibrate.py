"""`medclf recalibrate`: re-fit a trained run's temperature, operating threshold(s) and refer band on a new site's
labelled sample, and write a new run that uses the same weights (issue 21).

What moves between sites is rarely the ranking (ROC AUC) but the operating point and the calibration: a
threshold chosen on a random slice of the training cohort can sit in the wrong place for another scanner or
population. The fix clinical-AI guidance asks for is a local check and re-fit on a small labelled local sample.
Here the run's own rule (`eval.threshold`, `eval.target_sensitivity`, `eval.threshold_min_class`) is re-applied on
that sample, after a temperature fitted on it (one per run; one per label for multilabel), and the band
(`eval.conformal_alpha`) is re-fitted on it too when the run has one or `conformal_alpha` is given.

NEWRUN holds copies of the checkpoint(s) with the new contract (a checkpoint carries everything needed to use it
alone, DESIGN.md), the config, the data summary and `recalibration.json`: the source run, the cache (path and
content hash), the split, the ids of the images fitted on, and the values before and after. `evaluate NEWRUN` on
that cache leaves those images out and says so (`medclf.runs.recalibration`).
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from medclf.contract import DataContract
from medclf.data.dataset import CacheDataset
from medclf.device import pick_device
from medclf.engine.calibrate import apply_contract_temperature, fit_decisions
from medclf.errors import DataError, MedclfError
from medclf.io import make_temp_dir, write_json
from medclf.models.checkpoint import read_checkpoint, save_checkpoint
from medclf.outdirs import claim_output_dir, write_marker
from medclf.runs import Predictor, Run, RunDir, open_run_and_cache
from medclf.runs.predictor import device_of
from medclf.tasks import ThresholdRule, task_for

SAMPLE = "site sample"  # how threshold reasons name the images fitted on


def recalibrate(run_dir: str | Path, data: str | Path, out: str | Path, split: str | None = None,
                conformal_alpha: float | None = None, device: str = "auto", progress: bool = True) -> Path:
    """Re-fit temperature, threshold(s) and band of `run_dir` on the labelled images of `data` (every image, or
    one `split`), and write them with the same weights into `out`, which must not exist yet (or be empty).
    Returns `out`. Works for single runs and ensembles of every task type."""
    out = Path(out)
    _check_out(out, run_dir)
    run, cache = open_run_and_cache(run_dir, data, pick_device(device))
    rows = cache.indices(split)
    if len(rows) == 0:
        raise DataError(f"{cache.path}: split '{split}' is empty; nothing to recalibrate on")
    dataset = CacheDataset(cache, indices=rows)
    raw = _raw_predictor(run).predict_dataset(dataset, batch_size=run.config.eval.batch_size, progress=progress,
                                             desc="recalibrate").probs
    contract = replace(run.contract, threshold_warnings=list(run.contract.threshold_warnings))
    labels = dataset.labels
    before = _summary(run.contract, apply_contract_temperature(raw, run.contract), labels)
    band = run.contract.conformal or {}
    alpha = conformal_alpha if conformal_alpha is not None else band.get("alpha", run.config.eval.conformal_alpha)
    rule = replace(ThresholdRule.from_config(run.config), split=SAMPLE)  # the run's own rule, on the sample
    fit_decisions(contract, raw, labels, "temperature", rule, alpha, band.get("score", run.config.eval.conformal_score))
    probs = apply_contract_temperature(raw, contract)
    record = {"source_run": str(run.dir.path.resolve()), "cache": str(cache.path.resolve()),
              "cache_hash": cache.meta.get("content_hash"), "split": split or "all", "n": int(len(rows)),
              "threshold_rule": run.config.eval.threshold, "before": before,
              "after": _summary(contract, probs, labels), "ids": [str(i) for i in dataset.ids]}
    _write_new_run(run, contract, record, out)
    for warning in contract.threshold_warnings:  # as training says its own
        print(f"warning: {out}: {warning}", file=sys.stderr)
    return out


def _check_out(out: Path, run_dir: str | Path) -> None:
    if out.resolve() == Path(run_dir).resolve():
        raise MedclfError(f"{out}: --out must be a new folder, not the run being recalibrated")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MedclfError(f"{out}: already exists and is not empty; choose a new --out")
    claim_output_dir(out, "run", replace=True)  # checks only


def _raw_predictor(run: Run) -> Predictor:
    """The run's Predictor without its temperature: what a new temperature is fitted on."""
    return Predictor(run.model, replace(run.contract, temperature=None), tta_flip=run.config.eval.tta_flip,
                     device=device_of(run.model), image_size=run.image_size, norm=run.norm, detectors=[], name=run.name)


def _summary(contract: DataContract, probs: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Temperature, threshold(s) and log-loss of a contract on the sample's probabilities."""
    return {"temperature": contract.temperature, "threshold": contract.threshold, "thresholds": contract.thresholds,
            "threshold_reason": contract.threshold_reason,
            "log_loss": task_for(contract).log_loss(labels, probs),
            "conformal": contract.conformal}


def _write_new_run(run: Run, contract: DataContract, record: dict[str, Any], out: Path) -> None:
    """Everything written aside in a temporary sibling folder and renamed into place: nothing half-written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(f".{out.name}.", out.parent)
    try:
        src, new = run.dir, RunDir(tmp)
        for name in (RunDir.CONFIG, RunDir.DATA_SUMMARY):
            if (src / name).is_file():
                shutil.copy2(src / name, new / name)
        if src.is_ensemble:
            _write_ensemble(src, new, contract)
        else:
            payload = read_checkpoint(src.best)
            save_checkpoint(new.best, run.model, contract, payload["config"], payload.get("extra"))
        write_json(new.recalibration_path, record)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_ensemble(src: RunDir, new: RunDir, contract: DataContract) -> None:
    """The members' checkpoints copied unchanged (the ensemble's temperature and thresholds act on its combined
    output), and ensemble.json with the new values."""
    spec = src.ensemble_spec()
    for member in spec["members"]:
        target = new.member(member).best
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src.member(member).best, target)
    spec.update(threshold=contract.threshold, thresholds=contract.thresholds, temperature=contract.temperature,
                conformal=contract.conformal, operating_point=contract.operating_point, threshold_split=SAMPLE,
                threshold_source=contract.threshold_source, threshold_reason=contract.threshold_reason,
                threshold_warnings=contract.threshold_warnings)
    write_json(new.ensemble_path, spec)
    write_marker(new.path, "ensemble")
