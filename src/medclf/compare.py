"""`medclf compare`: runs evaluated on the same images side by side, with paired tests against the first run.

Reads only what `medclf evaluate` wrote (`predictions_<split>.csv`, `metrics_<split>.json`); never a model.
Each metric is shown with its 95% bootstrap interval from the run's metrics file. The differences in ROC AUC
and F1 against the first run come from `paired_bootstrap`: both runs are scored on the same resampled images
in every resample, so the interval and p-value account for the correlation between them (comparing two
unpaired intervals would not). Runs with K > 2 classes (softmax) or K labels (sigmoid) also get macro ROC AUC
(one-vs-rest, mean over classes) and its paired difference (`paired_macro_auc`), read from their `prob_<class>`
columns; a binary comparison has none of these columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from medclf.data.cache import Cache
from medclf.errors import MedclfError
from medclf.evaluation.bootstrap import paired_bootstrap
from medclf.evaluation.macro_auc import macro_roc_auc, paired_macro_auc
from medclf.io import read_json, write_text
from medclf.outdirs import check_output_file
from medclf.runs.layout import RunDir
from medclf.tasks import Task, task_for_metrics

SHOWN = (("roc_auc", "AUC"), ("pr_auc", "PR AUC"), ("recall", "sensitivity"), ("specificity", "specificity"),
         ("precision", "precision"), ("f1", "F1"), ("accuracy", "accuracy"))
PAIRED = (("roc_auc", "auc"), ("f1", "f1"))


@dataclass
class EvaluatedRun:
    """One run's predictions and metrics on a split."""

    name: str
    path: Path
    table: pd.DataFrame
    metrics: dict


def load_evaluated(run_dir: str | Path, split: str, name: str | None = None,
                   data: str | Path | None = None, content_hash: str | None = None) -> EvaluatedRun:
    """The run's evaluation of `split`: of its own cache, or of the cache `data` (whose content hash tags it)."""
    run_dir = Path(run_dir)
    rd = RunDir(run_dir)
    tag = rd.evaluation_tag(split, data, content_hash)
    files = [rd.predictions(tag), rd.metrics(tag)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise MedclfError(f"{run_dir}: no {' or '.join(missing)} ({_evaluate_hint(run_dir, split, tag, data)})")
    table = pd.read_csv(files[0], dtype={"id": str}, keep_default_na=False)
    if table["id"].duplicated().any():
        raise MedclfError(f"{files[0]}: image ids are not unique")
    return EvaluatedRun(name or run_dir.name, run_dir, table, read_json(files[1]))


def _evaluate_hint(run_dir: Path, split: str, tag: str, data: str | Path | None) -> str:
    """What to type: the evaluate command that writes `tag`, or --data when the run holds only other caches'."""
    others = sorted(t for t in RunDir(run_dir).prediction_tables() if t.startswith(f"{split}@") and t != tag)
    if data is None and others:
        return (f"{run_dir} has {split} evaluations of other caches ({', '.join(others)}): "
                f"add --data CACHE to compare those")
    with_data = f" --data {data}" if data is not None else ""
    return f"run `medclf evaluate {run_dir}{with_data} --split {split}`"


def run_names(paths: Sequence[Path]) -> list[str]:
    """Folder names, made unique with their parents' names when two runs share a name."""
    for depth in range(1, 6):
        names = ["/".join(Path(p).resolve().parts[-depth:]) for p in paths]
        if len(set(names)) == len(names):
            return names
    return [str(Path(p).resolve()) for p in paths]


def check_same_set(runs: list[EvaluatedRun], split: str) -> None:
    """Refuse runs whose predictions cover other images, other labels or another positive class."""
    ref = runs[0]
    ref_labels = dict(zip(ref.table["id"], ref.table["label"]))
    for run in runs[1:]:
        if set(run.table["id"]) != set(ref_labels) or len(run.table) != len(ref.table):
            raise MedclfError(f"runs {ref.name} and {run.name} were evaluated on different {split} sets "
                              f"({len(ref.table)} vs {len(run.table)} images, ids differ); "
                              "compare needs the same images")
        if any(ref_labels[i] != lab for i, lab in zip(run.table["id"], run.table["label"])):
            raise MedclfError(f"runs {ref.name} and {run.name} have different labels for the same {split} ids")
        if run.metrics.get("positive_index") != ref.metrics.get("positive_index"):
            raise MedclfError(f"runs {ref.name} and {run.name} score different positive classes")


def compare_runs(run_dirs: Sequence[str | Path], split: str = "test", out: str | Path | None = None,
                 n_boot: int = 1000, seed: int = 0, data: str | Path | None = None,
                 force: bool = False) -> pd.DataFrame:
    """One row per run: metrics with intervals, and paired differences in AUC and F1 against the first run (and
    in macro AUC for K-class or multilabel runs, `macro_auc_columns`).

    `data`: compare the runs' evaluations of that prepared cache (`medclf evaluate RUN --data CACHE`) instead of
    their own caches'. With `out` (e.g. comparison.md) writes the Markdown there and the same table as `.csv`
    and `.html` beside it; existing files are replaced only with `force`.
    """
    if len(run_dirs) < 2:
        raise MedclfError("compare needs at least two runs")
    if out is not None:
        for path in comparison_files(out):
            check_output_file(path, force)
    content_hash = Cache.open(data).meta.get("content_hash") if data is not None else None
    runs = [load_evaluated(p, split, n, data, content_hash)
            for p, n in zip(run_dirs, run_names([Path(p) for p in run_dirs]))]
    check_same_set(runs, split)
    ids = runs[0].table["id"].to_numpy()
    macro = macro_auc_columns(runs, ids, n_boot, seed)
    rows = [binary_columns(run, runs[0], ids, split, n_boot, seed) | macro_row for run, macro_row in zip(runs, macro)]
    frame = pd.DataFrame(rows)
    frame.attrs.update(split=split, n_boot=n_boot, seed=seed, reference=runs[0].name,
                       data=None if data is None else str(data))
    if out is not None:
        write_comparison(frame, Path(out))
    return frame


def binary_columns(run: EvaluatedRun, ref: EvaluatedRun, ids: np.ndarray, split: str, n_boot: int,
                   seed: int) -> dict:
    """One run's metrics with intervals, and its paired AUC and F1 differences from `ref` on the positive class
    (a multilabel run: its macro averages over findings, `headline_metrics`, and no paired binary test)."""
    m = headline_metrics(run)
    row = {"run": run.name, "path": str(run.path), "split": split, "n": m.get("n"), "n_pos": m.get("n_pos"),
           "threshold": m.get("threshold")}
    for key, _ in SHOWN:
        ci = (m.get("ci") or {}).get(key) or [None, None]
        row.update({key: m.get(key), f"{key}_lo": ci[0], f"{key}_hi": ci[1]})
    paired = run is not ref and "prob" in ref.table.columns  # a multilabel table has no single positive probability
    if paired:  # both aligned to the reference's image order
        ref_rows, rows = (r.table.set_index("id").loc[ids] for r in (ref, run))
        y = (ref_rows["label"].to_numpy() == int(ref.metrics.get("positive_index", 1))).astype(int)
        ref_prob, prob = (r["prob"].to_numpy(dtype=float) for r in (ref_rows, rows))
    for metric, short in PAIRED:
        test = None
        if paired:
            test = paired_bootstrap(y, ref_prob, prob, metric, ref.metrics["threshold"], run.metrics["threshold"],
                                    n_boot, seed)
        ci = (test or {}).get("ci") or [None, None]
        row.update({f"d_{short}": (test or {}).get("diff"), f"d_{short}_lo": ci[0], f"d_{short}_hi": ci[1],
                    f"p_{short}": (test or {}).get("p_value")})
    return row


def headline_metrics(run: EvaluatedRun) -> dict:
    """The figures a run's row shows: its metrics file, or for a multilabel run the macro averages over findings
    (each at its own threshold, so no single threshold and no single positive count)."""
    return run_task(run).headline(run.metrics)


def run_task(run: EvaluatedRun) -> Task:
    """The Task the run's metrics file was written by (its `task`, else the keys it holds), over the classes of
    its `prob_<name>` columns."""
    return task_for_metrics(run.metrics, table_classes(run))


def table_classes(run: EvaluatedRun) -> list[str]:
    return [c[len("prob_"):] for c in run.table.columns if c.startswith("prob_")]


def class_names(run: EvaluatedRun) -> list[str]:
    """The class or label names of a run's `prob_<name>` columns (table order); [] for a binary run."""
    return run_task(run).compared_classes(table_classes(run))


def class_arrays(run: EvaluatedRun, names: list[str], ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(truth: class indices, or N x K 0/1 decoded from multilabel bit masks; N x K probabilities), rows in
    the order of `ids`."""
    rows = run.table.set_index("id").loc[ids]
    probs = rows[[f"prob_{n}" for n in names]].to_numpy(dtype=float)
    labels = rows["label"].to_numpy(dtype=np.int64)
    return run_task(run).macro_truth(labels), probs


def macro_auc_columns(runs: list[EvaluatedRun], ids: np.ndarray, n_boot: int, seed: int) -> list[dict]:
    """Per run: macro AUC (with the interval evaluate wrote, when it did) and the paired difference from the first
    run; empty dicts when the runs are binary, so a binary comparison keeps exactly its columns."""
    names = class_names(runs[0])
    if not names:
        return [{} for _ in runs]
    truth, ref_probs = class_arrays(runs[0], names, ids)
    out = []
    for run in runs:
        if class_names(run) != names or run_task(run).name != run_task(runs[0]).name:
            raise MedclfError(f"runs {runs[0].name} and {run.name} score different classes or tasks "
                              f"({', '.join(names)} vs {', '.join(class_names(run)) or 'binary'})")
        probs = class_arrays(run, names, ids)[1]
        scope = run_task(run).macro_scope(run.metrics)
        ci = (scope.get("ci") or {}).get("macro_roc_auc") or [None, None]
        test = None if run is runs[0] else paired_macro_auc(truth, ref_probs, probs, n_boot, seed)
        d_ci = (test or {}).get("ci") or [None, None]
        out.append({"macro_auc": macro_roc_auc(truth, probs), "macro_auc_lo": ci[0], "macro_auc_hi": ci[1],
                    "d_macro_auc": (test or {}).get("diff"), "d_macro_auc_lo": d_ci[0], "d_macro_auc_hi": d_ci[1],
                    "p_macro_auc": (test or {}).get("p_value")})
    return out


def _num(v, digits: int = 3) -> str:
    return "—" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


def _with_ci(row: pd.Series, key: str, signed: bool = False) -> str:
    value, lo, hi = row.get(key), row.get(f"{key}_lo"), row.get(f"{key}_hi")
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "—"
    fmt = "{:+.3f}" if signed else "{:.3f}"
    interval = "" if lo is None or pd.isna(lo) else f" [{fmt.format(lo)}, {fmt.format(hi)}]"
    return fmt.format(value) + interval


def table_cells(frame: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and formatted rows shared by the Markdown and HTML tables."""
    ref = frame.attrs.get("reference", frame["run"].iloc[0])
    header = ["run", "n (pos)", *(label for _, label in SHOWN), "threshold",
              f"ΔAUC vs {ref}", "p (AUC)", f"ΔF1 vs {ref}", "p (F1)"]
    rows = []
    for _, row in frame.iterrows():
        counts = f"{row['n']}" if row["n_pos"] is None or pd.isna(row["n_pos"]) else f"{row['n']} ({row['n_pos']})"
        rows.append([row["run"], counts, *(_with_ci(row, k) for k, _ in SHOWN),
                     _num(row["threshold"]), _with_ci(row, "d_auc", True), _num(row["p_auc"]),
                     _with_ci(row, "d_f1", True), _num(row["p_f1"])])
    if "d_macro_auc" in frame.columns:  # K-class runs only: binary tables keep their columns
        header += ["macro AUC", f"Δmacro AUC vs {ref}", "p (macro AUC)"]
        for r, (_, row) in zip(rows, frame.iterrows()):
            r += [_with_ci(row, "macro_auc"), _with_ci(row, "d_macro_auc", True), _num(row["p_macro_auc"])]
    return header, rows


def note(frame: pd.DataFrame) -> str:
    a = frame.attrs
    cache = f" of `{a['data']}`" if a.get("data") else ""
    return (f"Split `{a.get('split')}`{cache}. Values with 95% percentile-bootstrap intervals over images; each run "
            f"at its own operating threshold, chosen on validation. Δ = run − {a.get('reference')} on the same "
            f"images: "
            f"paired bootstrap ({a.get('n_boot')} resamples, seed {a.get('seed')}), two-sided p-value."
            + (" Macro AUC: mean over classes of the one-vs-rest ROC AUC, from the prob_<class> columns; its Δ is "
               "tested the same way." if "d_macro_auc" in frame.columns else "")
            + (" Multilabel runs: macro averages over findings, each called at its own threshold."
               if frame["threshold"].isna().all() else ""))


def comparison_markdown(frame: pd.DataFrame) -> str:
    header, rows = table_cells(frame)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["--:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return note(frame) + "\n\n" + "\n".join(lines) + "\n"


def comparison_html(frame: pd.DataFrame) -> str:
    """An HTML fragment (note + table), escaped, for reports and the standalone comparison page."""
    from medclf.report.html import esc, html_table

    header, rows = table_cells(frame)
    return f'<p class="note">{esc(note(frame))}</p>' + html_table(header, rows, numeric=range(1, len(header)))


def comparison_files(out: str | Path) -> tuple[Path, Path, Path]:
    """The files `write_comparison` writes for `out`: the Markdown, its `.csv` and its `.html`."""
    out = Path(out)
    return out, out.with_suffix(".csv"), out.with_suffix(".html")


def write_comparison(frame: pd.DataFrame, out: Path) -> list[Path]:
    """`out` (Markdown), plus `.csv` (every number, unformatted) and `.html` (a self-contained page)."""
    md, csv, page = comparison_files(out)
    write_text(md, "# Comparison\n\n" + comparison_markdown(frame))
    write_text(csv, frame.to_csv(index=False, lineterminator="\n"))
    style = ("body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px}td.num,th.num{text-align:right}.note{color:#555}")
    write_text(page, f"<!doctype html><html><head><meta charset='utf-8'><title>Comparison</title>"
                     f"<style>{style}</style></head><body><h1>Comparison</h1>{comparison_html(frame)}</body></html>\n")
    return [md, csv, page]
