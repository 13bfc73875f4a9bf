"""`medclf evaluate`: predict a split of a cache with a run, then write the table, metrics and plots."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from medclf.config import Config
from medclf.data.cache import Cache
from medclf.data.dataset import CacheDataset
from medclf.device import pick_device
from medclf.engine.deploy_eval import deploy_evaluation
from medclf.errors import DataError
from medclf.evaluation.caveats import MIN_CLASS, metric_warnings, threshold_warning
from medclf.evaluation.metrics import CI_KEYS, binary_metrics
from medclf.evaluation.multiclass import multiclass_metrics
from medclf.evaluation.multilabel import multilabel_metrics
from medclf.evaluation.subgroups import (DEFAULT_AGE_BINS, TEST_NAME, UNKNOWN, check_age_bins, flat_rows,
                                         group_labels, group_order, subgroup_rows)
from medclf.io import atomic_path, write_json
from medclf.runs import Prediction, Predictor, RunDir, open_run_and_cache
from medclf.runs.layout import PLOT_KINDS
from medclf.runs.recalibration import exclude_fitted
from medclf.tasks import label_set_name, multi_hot
from medclf.tracking import open_run_tracker


def evaluate_run(
    run_dir: str | Path,
    data: str | Path | None = None,
    split: str = "test",
    n_boot: int = 1000,
    device: str = "auto",
    progress: bool = True,
    engine: str = "torch",
    mlflow_uri: str | None = None,
    by: Sequence[str] = (),
    age_bins: Sequence[float] = DEFAULT_AGE_BINS,
    min_group_class: int | None = None,
) -> dict:
    """Writes `predictions_<split>.csv`, `metrics_<split>.json` and plots into the run; returns the metrics
    (with `subgroups`, the dict of `write_subgroups`, when `by` names columns).

    The metrics and plots also go to the run's trackers: its TensorBoard folder, and the MLflow run that trained
    it (or, with `mlflow_uri`, the run in that store: the trained one when it was logged there, else a new one).

    The threshold is the one chosen on validation at training time and stored in the checkpoint: it is applied
    unchanged here, to probabilities computed exactly as they were then (the run's Predictor, test-time
    augmentation included). An external cache (`data`) must have the same label names; its outputs get a
    `@<hash>` tag.

    `by` names manifest columns (view, sex, age, extra folder-CSV columns): each adds its groups to
    `subgroups_<tag>.json/.csv/.png` (`write_subgroups`); groups with fewer than `min_group_class` positives or
    negatives (default: the run's eval.threshold_min_class) are reported as too small.
    """
    run, cache = open_run_and_cache(run_dir, data, pick_device(device))
    if by and run.contract.multilabel:
        raise DataError(f"--by: subgroups are reported for single-label runs; {run.dir.path} is multilabel")
    by = check_subgroup_columns(cache, by)
    age_bins = check_age_bins(age_bins)
    dataset, left_out = exclude_fitted(run.dir, cache, split_dataset(cache, split))  # a recalibrated run's sample
    if left_out:
        print(f"note: {left_out}", file=sys.stderr)
    tag = run.dir.evaluation_tag(split, cache.path, cache.meta.get("content_hash"))
    predictor = run.predictor(engine=engine)
    prediction = predictor.predict_dataset(dataset, progress=progress, desc=f"evaluate {split}")
    table = predictions_table(dataset, prediction, predictor, split)
    with atomic_path(run.dir.predictions(tag)) as tmp:
        table.to_csv(tmp, index=False)
    c = run.contract
    fallback = threshold_warning(c.threshold_source, c.threshold_reason)
    common = dict(n_boot=n_boot, min_class=run.config.eval.threshold_min_class, threshold_reason=c.threshold_reason,
                  notes=[n for n in (fallback, left_out) if n])
    if c.multilabel:
        metrics = write_multilabel_evaluation(table, c.label_names, c.label_thresholds(), run.dir, tag, **common)
    else:
        metrics = write_evaluation(table, c.threshold, run.dir, tag, positive_index=c.positive_index,
                                   label_names=c.label_names, **common)
    metrics.update(deploy_evaluation(table, c, run.dir, tag, n_boot=n_boot))  # calibration, decision curve, band
    save_metrics(run.dir, tag, metrics)
    subgroups = None
    if by:
        rows = cache.manifest.iloc[dataset.indices]
        min_class = run.config.eval.threshold_min_class if min_group_class is None else min_group_class
        subgroups = write_subgroups(table, rows, by, c.threshold, metrics, run.dir, tag, n_boot=n_boot,
                                    positive_index=c.positive_index, age_bins=age_bins, min_class=min_class)
    log_evaluation(run.dir, run.config, tag, metrics, mlflow_uri, subgroups)
    if subgroups is not None:  # after logging: the trackers get metrics.json's keys only
        metrics["subgroups"] = subgroups
    return metrics


def log_evaluation(rd: RunDir, cfg: Config, tag: str, metrics: dict[str, Any], mlflow_uri: str | None = None,
                   subgroups: dict[str, Any] | None = None) -> None:
    """Metrics with intervals, the plots and the tables (and, with `subgroups`, per-group AUC and counts, the
    forest plot and the subgroup files), to the trackers the run was trained with (MLflow: in the store
    `mlflow_uri`, when given), in one session."""
    with open_run_tracker(rd.path, cfg, mlflow_uri) as tracker:
        tracker.log_metrics(metrics, tag)
        for kind in PLOT_KINDS:
            tracker.log_image(f"{tag}/{kind}", rd.plot(kind, tag))
        tracker.log_artifact(rd.metrics(tag), "evaluation")
        tracker.log_artifact(rd.predictions(tag), "evaluation")
        if subgroups is not None:
            tracker.log_subgroups(subgroups, tag)
            tracker.log_image(f"{tag}/subgroups", rd.subgroups(tag, ".png"))
            for suffix in (".json", ".csv", ".png"):
                tracker.log_artifact(rd.subgroups(tag, suffix), "evaluation")


def predictions_table(dataset: CacheDataset, prediction: Prediction, predictor: Predictor, split: str) -> pd.DataFrame:
    """The predictions table of DESIGN.md: `id,label,prob,predicted,threshold,split,model` (+ `std` for ensembles,
    `prob_<class>` when K > 2, `ood,ood_score` when the run has a detector). `label` is the ground truth (class
    index), `predicted` the class called at `threshold`; `predict`'s CSV uses the same names."""
    columns = predictor.columns(prediction)
    head = pd.DataFrame({"id": dataset.ids, "label": dataset.labels})
    if predictor.contract.multilabel:  # label: the truth's bit mask; labels: its names (medclf.tasks)
        head["labels"] = [label_set_name(m, predictor.contract.label_names) for m in dataset.labels]
        lead = [c for c in columns.columns if c.startswith(("prob_", "pred_")) or c == "predicted"]
    else:
        lead = ["prob", "predicted", "threshold"]
    table = pd.concat([head, columns[lead]], axis=1)
    table["split"], table["model"] = split, predictor.name
    rest = [c for c in columns.columns if c not in table.columns]
    return pd.concat([table, columns[rest]], axis=1)


def split_dataset(cache: Cache, split: str) -> CacheDataset:
    dataset = CacheDataset(cache, split=split)
    if len(dataset) == 0:
        raise DataError(f"{cache.path}: split '{split}' is empty")
    return dataset


def write_evaluation(pred_df: Any, threshold: float, run_dir: str | Path | RunDir, tag: str, n_boot: int = 1000,
                     positive_index: int = 1, label_names: Sequence[str] | None = None, seed: int = 0,
                     min_class: int = MIN_CLASS, threshold_reason: str | None = None,
                     notes: Sequence[str] = ()) -> dict[str, Any]:
    """Metrics and plots for one predictions table (columns ``label,prob``; all rows are used).
    A K-class table (``prob_<class>`` for K > 2 classes) also gets ``multiclass``: per-class metrics, averages,
    accuracy, balanced accuracy, kappa and the K x K confusion (medclf.evaluation.multiclass).

    Writes ``metrics_<tag>.json`` (the binary_metrics dict plus ``split``, ``positive_index``, ``n_boot``,
    ``threshold_reason`` and ``warnings``: `metric_warnings` at `min_class`, then `notes`) and the confusion,
    ROC, PR and calibration plots into the run. A test split (``test`` or ``test@<cachehash8>``) also writes
    ``metrics.json``, so it holds the last evaluated test split. Returns the metrics dict.
    """
    from medclf.evaluation import plots  # matplotlib is only needed here

    rd = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    rd.metrics(tag)  # checks the tag before any work
    y, prob = labelled_arrays(pred_df, positive_index)
    metrics = binary_metrics(y, prob, threshold, n_boot=n_boot, seed=seed)
    metrics.update(split=tag, positive_index=int(positive_index), n_boot=int(n_boot),
                   threshold_reason=threshold_reason, warnings=metric_warnings(metrics, min_class) + list(notes))
    probs = class_probs(pred_df, label_names)
    if probs is not None:  # a K-class run; the binary keys stay: its positive class against the rest
        metrics["multiclass"] = multiclass_metrics(pred_df["label"].to_numpy(), probs, label_names, n_boot=n_boot,
                                                   seed=seed)
    save_metrics(rd, tag, metrics)
    names = positive_negative_names(label_names, positive_index)
    plots.plot_confusion(metrics["tp"], metrics["fp"], metrics["fn"], metrics["tn"], rd.plot("confusion", tag), names,
                         title=f"{tag} (threshold {threshold:.3g})")
    plots.plot_roc(y, prob, rd.plot("roc", tag), threshold=threshold, title=tag)
    plots.plot_pr(y, prob, rd.plot("pr", tag), threshold=threshold, title=tag)
    plots.plot_calibration(y, prob, rd.plot("calibration", tag), title=tag)
    if probs is not None:  # each class against the rest, marked where it is the most probable class
        onehot = np.eye(probs.shape[1], dtype=np.int8)[pred_df["label"].to_numpy()]
        plots.plot_label_curves(onehot, probs, label_names, [None] * probs.shape[1], rd.plot("roc_classes", tag),
                                title=f"{tag}: each class against the rest")
    return metrics


def write_multilabel_evaluation(pred_df: pd.DataFrame, label_names: Sequence[str], thresholds: Sequence[float],
                                run_dir: str | Path | RunDir, tag: str, n_boot: int = 1000, seed: int = 0,
                                min_class: int = MIN_CLASS, threshold_reason: str | None = None,
                                notes: Sequence[str] = ()) -> dict[str, Any]:
    """A multilabel run's `metrics_<tag>.json` (medclf.evaluation.multilabel: per label and averaged, with
    `task`, `roc_auc` = the macro ROC AUC, `split`, `n_boot`, `threshold_reason`, `warnings`: each label's
    `metric_warnings`, prefixed with its name) and its per-label ROC and PR plots. Returns the metrics dict."""
    from medclf.evaluation import plots  # matplotlib is only needed here

    rd = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    rd.metrics(tag)  # checks the tag before any work
    probs = pred_df[[f"prob_{n}" for n in label_names]].to_numpy(dtype=np.float64)
    metrics = {"task": "multilabel", "split": tag, "n_boot": int(n_boot), "threshold_reason": threshold_reason,
               **multilabel_metrics(pred_df["label"].to_numpy(), probs, label_names, thresholds, n_boot=n_boot,
                                    seed=seed)}
    metrics["roc_auc"] = metrics["macro"]["roc_auc"]
    metrics["warnings"] = [f"{name}: {w}" for name, m in metrics["per_label"].items()
                           for w in metric_warnings(m, min_class)] + list(notes)
    save_metrics(rd, tag, metrics)
    y = multi_hot(pred_df["label"].to_numpy(), len(label_names))
    for kind in ("roc", "pr"):
        plots.plot_label_curves(y, probs, label_names, thresholds, rd.plot(kind, tag), kind=kind, title=tag)
    return metrics


def save_metrics(rd: RunDir, tag: str, metrics: dict[str, Any]) -> None:
    """`metrics_<tag>.json`; a test split (``test`` or ``test@<cachehash8>``) also writes ``metrics.json``, so it
    holds the last evaluated test split."""
    write_json(rd.metrics(tag), metrics)
    if tag.split("@")[0] == "test":
        write_json(rd / RunDir.METRICS, metrics)


def class_probs(pred_df: Any, label_names: Sequence[str] | None) -> np.ndarray | None:
    """The `prob_<class>` columns of a K-class (K > 2) predictions table as an N x K array; None for a binary run
    or a table without them."""
    columns = [f"prob_{name}" for name in label_names or ()]
    if len(columns) <= 2 or any(c not in pred_df.columns for c in columns):
        return None
    return pred_df[columns].to_numpy(dtype=np.float64)


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


# manifest columns that identify an image, hold its truth or place it: grouping by them means nothing
NOT_SUBGROUP_COLUMNS = ("index", "id", "patient_id", "label", "label_name", "split", "boxes", "source")


def subgroup_columns(cache: Cache) -> list[str]:
    """The manifest columns `--by` accepts: view, sex, age and any extra column the source kept."""
    return [c for c in cache.manifest.columns if c not in NOT_SUBGROUP_COLUMNS]


def check_subgroup_columns(cache: Cache, by: Sequence[str]) -> list[str]:
    """`by` without repeats, or a one-line error naming the valid columns."""
    valid = subgroup_columns(cache)
    unknown = [c for c in by if c not in valid]
    if unknown:
        raise DataError(f"--by: no column {', '.join(map(repr, unknown))} in {cache.path}'s manifest; "
                        f"valid: {', '.join(valid)}")
    return list(dict.fromkeys(by))


def write_subgroups(pred_df: pd.DataFrame, manifest_rows: pd.DataFrame, by: Sequence[str], threshold: float,
                    overall: dict[str, Any], run_dir: str | Path | RunDir, tag: str, n_boot: int = 1000,
                    positive_index: int = 1, age_bins: Sequence[float] = DEFAULT_AGE_BINS, seed: int = 0,
                    min_class: int = MIN_CLASS) -> dict[str, Any]:
    """Metrics per group of each `by` column (manifest rows aligned with the predictions table), written as
    `subgroups_<tag>.json`, `.csv` and the forest plot `.png`; returns the JSON dict."""
    from medclf.evaluation.forest import plot_forest  # matplotlib is only needed here

    rd = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    if len(manifest_rows) != len(pred_df):
        raise DataError(f"{len(manifest_rows)} manifest rows for a predictions table of {len(pred_df)}")
    y, prob = labelled_arrays(pred_df, positive_index)
    columns = {}
    for column in by:
        groups = group_labels(manifest_rows[column].to_numpy(), column, age_bins)
        columns[column] = subgroup_rows(y, prob, groups, threshold, group_order(groups, column, age_bins),
                                        n_boot=n_boot, seed=seed, min_class=min_class)
    result = {"split": tag, "threshold": float(threshold), "n_boot": int(n_boot), "min_class": int(min_class),
              "age_bins": list(age_bins), "unknown": UNKNOWN, "test": TEST_NAME,
              "overall": {k: overall.get(k) for k in ("n", "n_pos", "roc_auc")} | {
                  "roc_auc_ci": (overall.get("ci") or {}).get("roc_auc")},
              "columns": columns}
    write_json(rd.subgroups(tag), result)
    table = pd.DataFrame([r for c, rows in columns.items() for r in flat_rows(c, rows, CI_KEYS)])
    with atomic_path(rd.subgroups(tag, ".csv")) as tmp:
        table.to_csv(tmp, index=False)
    plot_forest(columns, overall.get("roc_auc"), rd.subgroups(tag, ".png"), title=f"ROC AUC per subgroup, {tag}")
    return result
