"""`medclf compare`: runs evaluated on the same images side by side, with paired tests against the first run.

Reads only what `medclf evaluate` wrote (`predictions_<split>.csv`, `metrics_<split>.json`); never a model.
Each metric is shown with its 95% bootstrap interval from the run's metrics file. The differences in ROC AUC
and F1 against the first run come from `paired_bootstrap`: both runs are scored on the same resampled images
in every resample, so the interval and p-value account for the correlation between them (comparing two
unpaired intervals would not).
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
from medclf.io import read_json, write_text
from medclf.runs.layout import RunDir

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
                 n_boot: int = 1000, seed: int = 0, data: str | Path | None = None) -> pd.DataFrame:
    """One row per run: metrics with intervals, and paired differences in AUC and F1 against the first run.

    `data`: compare the runs' evaluations of that prepared cache (`medclf evaluate RUN --data CACHE`) instead of
    their own caches'. With `out` (e.g. comparison.md) writes the Markdown there and the same table as `.csv`
    and `.html` beside it.
    """
    if len(run_dirs) < 2:
        raise MedclfError("compare needs at least two runs")
    content_hash = Cache.open(data).meta.get("content_hash") if data is not None else None
    runs = [load_evaluated(p, split, n, data, content_hash)
            for p, n in zip(run_dirs, run_names([Path(p) for p in run_dirs]))]
    check_same_set(runs, split)
    ref = runs[0]
    pos = int(ref.metrics.get("positive_index", 1))
    ids = ref.table["id"].to_numpy()
    y = (ref.table["label"].to_numpy() == pos).astype(int)
    ref_prob = ref.table["prob"].to_numpy(dtype=float)
    rows = []
    for run in runs:
        prob = run.table.set_index("id").loc[ids, "prob"].to_numpy(dtype=float)  # aligned to the first run's order
        row = {"run": run.name, "path": str(run.path), "split": split, "n": run.metrics.get("n"),
               "n_pos": run.metrics.get("n_pos"), "threshold": run.metrics.get("threshold")}
        for key, _ in SHOWN:
            ci = (run.metrics.get("ci") or {}).get(key) or [None, None]
            row.update({key: run.metrics.get(key), f"{key}_lo": ci[0], f"{key}_hi": ci[1]})
        for metric, short in PAIRED:
            test = None if run is ref else paired_bootstrap(
                y, ref_prob, prob, metric, ref.metrics["threshold"], run.metrics["threshold"], n_boot, seed)
            ci = (test or {}).get("ci") or [None, None]
            row.update({f"d_{short}": (test or {}).get("diff"), f"d_{short}_lo": ci[0], f"d_{short}_hi": ci[1],
                        f"p_{short}": (test or {}).get("p_value")})
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame.attrs.update(split=split, n_boot=n_boot, seed=seed, reference=ref.name,
                       data=None if data is None else str(data))
    if out is not None:
        write_comparison(frame, Path(out))
    return frame


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
        rows.append([row["run"], f"{row['n']} ({row['n_pos']})", *(_with_ci(row, k) for k, _ in SHOWN),
                     _num(row["threshold"]), _with_ci(row, "d_auc", True), _num(row["p_auc"]),
                     _with_ci(row, "d_f1", True), _num(row["p_f1"])])
    return header, rows


def note(frame: pd.DataFrame) -> str:
    a = frame.attrs
    cache = f" of `{a['data']}`" if a.get("data") else ""
    return (f"Split `{a.get('split')}`{cache}. Values with 95% percentile-bootstrap intervals over images; each run "
            f"at its own operating threshold, chosen on validation. Δ = run − {a.get('reference')} on the same "
            f"images: "
            f"paired bootstrap ({a.get('n_boot')} resamples, seed {a.get('seed')}), two-sided p-value.")


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


def write_comparison(frame: pd.DataFrame, out: Path) -> list[Path]:
    """`out` (Markdown), plus `.csv` (every number, unformatted) and `.html` (a self-contained page)."""
    md, csv, page = out, out.with_suffix(".csv"), out.with_suffix(".html")
    write_text(md, "# Comparison\n\n" + comparison_markdown(frame))
    write_text(csv, frame.to_csv(index=False, lineterminator="\n"))
    style = ("body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px}td.num,th.num{text-align:right}.note{color:#555}")
    write_text(page, f"<!doctype html><html><head><meta charset='utf-8'><title>Comparison</title>"
                     f"<style>{style}</style></head><body><h1>Comparison</h1>{comparison_html(frame)}</body></html>\n")
    return [md, csv, page]
