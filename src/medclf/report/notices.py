"""What a reader must know before the numbers, as plain sentences (html.py escapes and boxes them): made-up
data, figures that may mean nothing, which checkpoint was kept and why, and which command adds what is missing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from medclf.config import TrainConfig
from medclf.engine.state import EarlyStopper
from medclf.errors import MedclfError
from medclf.evaluation.caveats import metric_warnings
from medclf.runs.layout import RunDir

# optional sections, the run file each rests on, and the command that writes it
_OPTIONAL = (("Explanations", RunDir.EXPLAIN_SCORES, "medclf explain {run} --data CACHE --score"),
             ("Robustness (attacks)", RunDir.ROBUSTNESS, "medclf attack {run}"),
             ("Robustness (out-of-distribution)", RunDir.OOD, "medclf ood {run} --ood CACHE"))


def synthetic_note(summary: dict[str, Any] | None) -> str | None:
    """A sentence when the run's cache was made up (the demo's), else None."""
    if not summary:
        return None
    marker = summary.get("synthetic")
    if not marker and summary.get("source") != "synthetic":
        return None
    what = marker.get("note") if isinstance(marker, dict) and marker.get("note") else "synthetic images"
    return (f"This run's data are {what}: its figures show that the pipeline works, not how well a model reads "
            "real chest X-rays.")


def unevaluated_note(run_dir: Path) -> str:
    return (f"This run has not been evaluated yet: run `medclf evaluate {run_dir} --split test` (and `--split val`) "
            "to add the metrics, plots and summary, then `medclf report` again.")


def missing_section_hints(run_dir: Path) -> list[str]:
    """'Explanations: `medclf explain RUN --data CACHE --score`' for each optional section the run lacks."""
    return [f"{name}: `{command.format(run=run_dir)}`" for name, file, command in _OPTIONAL
            if not (run_dir / file).is_file()]


def split_warnings(metrics: dict[str, Any]) -> list[str]:
    """The metrics file's own `warnings`; for files written before they existed, worked out from the dict."""
    if "warnings" in metrics:
        return [str(w) for w in metrics["warnings"] or []]
    if "n" not in metrics or "n_pos" not in metrics:
        return []
    return metric_warnings(metrics)


def selection_facts(history: pd.DataFrame, config: dict[str, Any]) -> list[str]:
    """Which epoch best.pt holds and by which metric (train.early_stop_metric), and the lowest val loss when
    another metric chose: the two need not be the same epoch."""
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    metric = str(train.get("early_stop_metric") or TrainConfig().early_stop_metric)
    try:
        kept = EarlyStopper.kept_epoch(history, metric)
    except MedclfError:
        kept = None
    if kept is None:
        return [f"the selection metric {metric} (train.early_stop_metric) is not in the history"]
    value = history.loc[history["epoch"] == kept, metric].iloc[0]
    facts = [f"best {metric} {value:.3f} at epoch {kept}: the kept checkpoint ({RunDir.BEST}), selected by "
             f"train.early_stop_metric"]
    if metric != "val_loss" and "val_loss" in history.columns and history["val_loss"].notna().any():
        i = history["val_loss"].idxmin()
        facts.append(f"lowest val_loss {history.at[i, 'val_loss']:.3f} at epoch {history.at[i, 'epoch']}")
    return facts


def views_named(view_counts: dict[str, Any]) -> dict[str, Any]:
    """split -> {view: n} with empty views as the group `unknown` (runs trained before data_summary named it)."""
    named: dict[str, Any] = {}
    for split, row in view_counts.items():
        named[split] = {}
        for view, n in (row.items() if isinstance(row, dict) else ()):
            key = view if str(view).strip() else "unknown"
            named[split][key] = named[split].get(key, 0) + n
    return named


def freshness_notes(run_dir: Path, stale: list[str]) -> list[str]:
    """An unfinished training (with the command that finishes it) and evaluations left out because they were
    made with other weights (medclf.runs.freshness)."""
    from medclf.runs.freshness import stale_note, training_status

    unfinished = training_status(run_dir)
    notes = [unfinished.message()] if unfinished else []
    return notes + ([note] if (note := stale_note(run_dir, stale)) else [])
