"""Fitting what turns a trained model's probabilities into a site's decisions: the temperature (`eval.calibrate`),
the operating threshold(s) by the run's own rule, the conformal refer band (`eval.conformal_alpha`) and the
reference operating point (`fit_decisions` does all four).

Training fits them on validation when it ends (`finalize_run`), ensembles on their validation split, and
`medclf recalibrate` on a new site's labelled sample. The order matters and is the same everywhere: the
temperature first (on the raw probabilities), then the thresholds and the band on the tempered probabilities,
which are exactly what the inference graph hands out (the same `tempered` function, on the same float32 values).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from medclf.config import Config
from medclf.contract import DataContract
from medclf.errors import ConfigError
from medclf.evaluation.conformal import SCORES, check_alpha
from medclf.tasks import ChosenThresholds, ThresholdRule, task_for

CALIBRATE_METHODS = ("temperature", "none")


def check_calibration_options(cfg: Config) -> None:
    """eval.calibrate, eval.conformal_alpha and eval.conformal_score, refused before any work."""
    e = cfg.eval
    if e.calibrate not in CALIBRATE_METHODS:
        raise ConfigError(f"eval.calibrate: unknown '{e.calibrate}' (valid: {', '.join(CALIBRATE_METHODS)})")
    if e.conformal_score not in SCORES:
        raise ConfigError(f"eval.conformal_score: unknown '{e.conformal_score}' (valid: {', '.join(SCORES)})")
    if e.conformal_alpha is not None:
        try:
            check_alpha(e.conformal_alpha)
        except Exception as err:  # MedclfError from the formula: say which key
            raise ConfigError(f"eval.conformal_alpha: {err}") from None


def apply_contract_temperature(probs: np.ndarray, contract: DataContract) -> np.ndarray:
    """`probs` as the inference graph of `contract` hands them out (unchanged when it has no temperature)."""
    if contract.temperature is None:
        return probs
    t = torch.tensor(contract.temperature, dtype=torch.float32)
    return task_for(contract).tempered(torch.from_numpy(np.asarray(probs, dtype=np.float32)), t).numpy()


def fit_contract_temperature(contract: DataContract, raw_probs: np.ndarray, labels: np.ndarray,
                             method: str, min_class: int = 1) -> np.ndarray:
    """Set `contract.temperature` (None when `method` is "none") from raw probabilities; return the tempered ones.
    `min_class`: the images of each class (each label's presence and absence) a fitted T needs, else T = 1."""
    contract.temperature = None
    if method == "temperature":
        contract.temperature = task_for(contract).fit_temperature(labels, raw_probs, min_class)
    return apply_contract_temperature(raw_probs, contract)


def fit_contract_band(contract: DataContract, probs: np.ndarray, labels: np.ndarray, alpha: float | None,
                      score: str, fitted_on: str) -> None:
    """Set `contract.conformal` from the (tempered) probabilities of labelled images; None when alpha is None."""
    contract.conformal = None
    if alpha is not None:
        band = task_for(contract).fit_band(labels, probs, alpha, score)
        contract.conformal = {**band, "fitted_on": fitted_on}


def fit_decisions(contract: DataContract, raw_probs: np.ndarray, labels: np.ndarray, calibrate: str,
                  rule: ThresholdRule, alpha: float | None, score: str) -> ChosenThresholds:
    """Everything a run decides with, fitted on labelled images (validation when training ends; a site's sample
    in `medclf recalibrate`), in this order: the temperature on the raw probabilities; then, on the tempered ones
    the graph will hand out, the threshold(s) by `rule`, the refer band at `alpha`, and the decisions' counts
    (`operating_point`, what `evaluate` compares other images with). Returns the chosen thresholds."""
    probs = fit_contract_temperature(contract, raw_probs, labels, calibrate, rule.min_class)
    task = task_for(contract)
    chosen = task.choose_thresholds(labels, probs, rule)
    task.store_thresholds(contract, chosen)
    fit_contract_band(contract, probs, labels, alpha, score, rule.split)
    contract.operating_point = {"split": rule.split, "n": int(len(labels)),
                                "counts": task.operating_counts(labels, probs)}
    if contract.conformal and math.isinf(max(contract.conformal["qhat"])):  # said, not left to be found
        alpha = contract.conformal["alpha"]
        contract.threshold_warnings = [*contract.threshold_warnings, (
            f"{rule.split}: a refer band at alpha {alpha:g} needs about 1/alpha - 1 = {1 / alpha - 1:.0f} images or "
            f"more; with {len(labels)} every set holds every class, so every image is referred")]
    return chosen
