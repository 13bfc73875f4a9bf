"""`medclf evaluate`: predict a split of a cache with a run, then write the table, metrics and plots."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from medclf.config import Config
from medclf.data.cache import Cache
from medclf.data.dataset import CacheDataset
from medclf.device import pick_device
from medclf.engine.deploy_eval import deploy_evaluation
from medclf.errors import DataError, closest
from medclf.evaluation.caveats import MIN_CLASS, threshold_warning
from medclf.evaluation.metrics import CI_KEYS
from medclf.evaluation.subgroups import (
    DEFAULT_AGE_BINS,
    TEST_NAME,
    UNKNOWN,
    check_age_bins,
    flat_rows,
    group_labels,
    group_order,
    subgroup_rows,
)
from medclf.io import atomic_path, write_json
from medclf.runs import Prediction, Predictor, RunDir, open_run_and_cache
from medclf.runs.freshness import WEIGHTS_KEY, weights_fingerprint
from medclf.runs.layout import PLOT_KINDS
from medclf.runs.recalibration import exclude_fitted
from medclf.tasks import BinaryTask, Task, make_task, task_for
from medclf.tasks.single import labelled_arrays
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
    task = task_for(run.contract)
    task.check_subgroups(by, run.dir.path)
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
    c = predictor.contract  # the engine's: onnx-int8 decides at the threshold chosen on its own probabilities
    fallback = threshold_warning(c.threshold_source, c.threshold_reason)
    common = dict(n_boot=n_boot, min_class=run.config.eval.threshold_min_class, threshold_reason=c.threshold_reason,
                  notes=[n for n in (fallback, left_out) if n])
    metrics = task_evaluation(table, task, run.dir, tag, **common)  # saved once, with the deploy entries below
    remedy = f"medclf recalibrate {run.dir.path} --data {cache.path} --out NEWRUN"
    deploy = deploy_evaluation(table, c, run.dir, tag, n_boot=n_boot, remedy=remedy)  # calibration, curves, band
    moved = deploy.pop("deploy_warnings")
    metrics.update(deploy, warnings=[*metrics.get("warnings", []), *moved])  # the CLI prints them
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
    task = predictor.task
    # label: the truth (a class index; a multilabel bit mask, spelled out in `labels`)
    head = pd.DataFrame({"id": dataset.ids, "label": dataset.labels, **task.truth_columns(dataset.labels)})
    table = pd.concat([head, columns[task.lead_column_names()]], axis=1)
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
    """`write_task_evaluation` for a single-label table (columns ``label,prob``; a K-class table with
    ``prob_<class>`` for K > 2 classes also gets ``multiclass``: per-class metrics, averages, accuracy, balanced
    accuracy, kappa and the K x K confusion), at `threshold` for class `positive_index`."""
    task = make_task(None, label_names, positive_index, threshold) if label_names else \
        BinaryTask(None, positive_index, threshold)
    return write_task_evaluation(pred_df, task, run_dir, tag, n_boot=n_boot, seed=seed, min_class=min_class,
                                 threshold_reason=threshold_reason, notes=notes)


def write_task_evaluation(pred_df: Any, task: Task, run_dir: str | Path | RunDir, tag: str, n_boot: int = 1000,
                          seed: int = 0, min_class: int = MIN_CLASS, threshold_reason: str | None = None,
                          notes: Sequence[str] = ()) -> dict[str, Any]:
    """Metrics and plots of one predictions table (all rows are used), as the Task defines them
    (`Task.metrics_entry`, `Task.plot_evaluation`).

    Writes ``metrics_<tag>.json`` (the Task's entry with ``split``; its ``warnings``: `metric_warnings` at
    `min_class`, then `notes`) and the plots into the run. A test split (``test`` or ``test@<cachehash8>``) also
    writes ``metrics.json``, so it holds the last evaluated test split. Returns the metrics dict.
    """
    rd = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    metrics = task_evaluation(pred_df, task, rd, tag, n_boot=n_boot, seed=seed, min_class=min_class,
                              threshold_reason=threshold_reason, notes=notes)
    save_metrics(rd, tag, metrics)
    return metrics


def task_evaluation(pred_df: Any, task: Task, rd: RunDir, tag: str, n_boot: int = 1000, seed: int = 0,
                    min_class: int = MIN_CLASS, threshold_reason: str | None = None,
                    notes: Sequence[str] = ()) -> dict[str, Any]:
    """`write_task_evaluation` without writing the metrics file: the Task's entry, and its plots in the run."""
    rd.metrics(tag)  # checks the tag before any work
    metrics = task.metrics_entry(pred_df, tag, n_boot=n_boot, seed=seed, min_class=min_class,
                                 threshold_reason=threshold_reason, notes=notes)
    task.plot_evaluation(pred_df, metrics, lambda kind: rd.plot(kind, tag), tag)
    return metrics


def save_metrics(rd: RunDir, tag: str, metrics: dict[str, Any]) -> None:
    """`metrics_<tag>.json`; a test split (``test`` or ``test@<cachehash8>``) also writes ``metrics.json``, so it
    holds the last evaluated test split. Each records the fingerprint of the weights that made it (`weights`),
    so a report can leave out evaluations made before the weights changed."""
    fingerprint = weights_fingerprint(rd.path)
    metrics = {**metrics, WEIGHTS_KEY: fingerprint} if fingerprint else metrics
    write_json(rd.metrics(tag), metrics)
    if tag.split("@")[0] == "test":
        write_json(rd / RunDir.METRICS, metrics)


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
        match = closest(unknown[0], valid)
        hint = f" (did you mean {match}?)" if match else ""
        raise DataError(f"--by: no column {', '.join(map(repr, unknown))} in {cache.path}'s manifest{hint}; "
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
