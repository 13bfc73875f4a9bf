"""Evaluation and training plots, written atomically as PNG.

Figures are built with matplotlib's object API on the Agg canvas (no pyplot): no global backend or figure
state, so plotting is safe inside servers, threads and tests. Every figure has a fixed pixel size
(``FIGSIZE`` x ``DPI``) so reports can lay them out predictably.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from medclf.errors import MedclfError
from medclf.evaluation.calibration import expected_calibration_error, reliability_curve
from medclf.evaluation.metrics import check_binary_inputs
from medclf.io import atomic_path

DPI = 100
FIGSIZE = {"confusion": (5.0, 4.5), "roc": (5.0, 5.0), "pr": (5.0, 5.0), "calibration": (5.0, 6.0),
           "curves": (10.0, 4.0)}
OPERATING_POINT = dict(marker="o", markersize=8, color="#d62728", linestyle="none", zorder=5)
METRIC_COLUMNS = ("val_auc", "val_f1", "val_accuracy")
# curves that lie on top of each other (AUC, F1 and accuracy near 1) stay apart by line style and marker, in print
# and for colour-blind readers too, not by colour alone
CURVE_STYLES = (dict(color="#1f77b4", linestyle="-", marker="o", markersize=4),
                dict(color="#ff7f0e", linestyle="--", marker="s", markersize=4, markerfacecolor="none"),
                dict(color="#2ca02c", linestyle=":", marker="^", markersize=5, markerfacecolor="none"))


def _figure(kind: str) -> Figure:
    fig = Figure(figsize=FIGSIZE[kind], dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write `fig` as PNG at its own size, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def plot_confusion(
    tp: int, fp: int, fn: int, tn: int, path: str | Path,
    label_names: Sequence[str] = ("positive", "negative"), title: str | None = None,
) -> Path:
    """2x2 confusion matrix: rows = predicted (positive, negative), columns = actual (positive, negative).

    Each cell shows its name (TP/FP/FN/TN), the count and the percentage of all images. `label_names` is
    (positive name, negative name).
    """
    cells = np.array([[tp, fp], [fn, tn]], dtype=np.int64)
    if (cells < 0).any():
        raise MedclfError(f"confusion counts must be non-negative, got tp={tp} fp={fp} fn={fn} tn={tn}")
    total = max(int(cells.sum()), 1)
    pos_name, neg_name = (str(n) for n in label_names)
    fig = _figure("confusion")
    ax = fig.add_subplot()
    ax.imshow(cells, cmap="Blues", vmin=0, vmax=max(int(cells.max()), 1))
    names = [["TP", "FP"], ["FN", "TN"]]
    for r in range(2):
        for c in range(2):
            dark = cells[r, c] > 0.55 * max(int(cells.max()), 1)
            ax.text(c, r, f"{names[r][c]}\n{cells[r, c]:,}\n{100.0 * cells[r, c] / total:.1f}%",
                    ha="center", va="center", fontsize=13, color="white" if dark else "#1a1a1a")
    ax.set_xticks([0, 1], [pos_name, neg_name])
    ax.set_yticks([0, 1], [pos_name, neg_name], rotation=90, va="center")
    ax.xaxis.set_label_position("top")
    ax.xaxis.tick_top()
    ax.set_xlabel("Actual")
    ax.set_ylabel("Predicted")
    ax.tick_params(length=0)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def _operating_point(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[float, float, float]:
    """(sensitivity, 1 - specificity, precision) at `threshold`; NaN where undefined."""
    called = p >= threshold
    n_pos, n_neg, n_called = int(y.sum()), int(len(y) - y.sum()), int(called.sum())
    tp = int((called & (y == 1)).sum())
    sens = tp / n_pos if n_pos else np.nan
    fpr = (n_called - tp) / n_neg if n_neg else np.nan
    prec = tp / n_called if n_called else np.nan
    return sens, fpr, prec


def _undefined(ax: Any, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="#666666")


def plot_roc(y: Any, prob: Any, path: str | Path, threshold: float | None = None, title: str | None = None) -> Path:
    """ROC curve with its AUC; the operating point at `threshold` is marked. One class: an explanatory note."""
    y, p = check_binary_inputs(y, prob)
    fig = _figure("roc")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="#bbbbbb", linestyle="--", linewidth=1, label="chance")
    if 0 < y.sum() < len(y):
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, color="#1f77b4", linewidth=2, label=f"ROC (AUC = {roc_auc_score(y, p):.3f})")
        if threshold is not None:
            sens, fp_rate, _ = _operating_point(y, p, threshold)
            ax.plot([fp_rate], [sens], **OPERATING_POINT,
                    label=f"threshold {threshold:.3g}: sens {sens:.2f}, spec {1 - fp_rate:.2f}")
        ax.legend(loc="lower right", fontsize=9)
    else:
        _undefined(ax, "ROC undefined: needs both classes")
    _finish_unit_axes(ax, "False positive rate (1 - specificity)", "True positive rate (sensitivity)", title)
    return save_figure(fig, path)


def plot_pr(y: Any, prob: Any, path: str | Path, threshold: float | None = None, title: str | None = None) -> Path:
    """Precision-recall curve with average precision and the prevalence baseline; operating point marked."""
    y, p = check_binary_inputs(y, prob)
    fig = _figure("pr")
    ax = fig.add_subplot()
    if y.sum() > 0:
        precision, recall, _ = precision_recall_curve(y, p)
        prevalence = float(y.mean())
        ax.axhline(prevalence, color="#bbbbbb", linestyle="--", linewidth=1, label=f"prevalence {prevalence:.2f}")
        ax.step(recall, precision, where="post", color="#1f77b4", linewidth=2,
                label=f"PR (AP = {average_precision_score(y, p):.3f})")
        if threshold is not None:
            sens, _, prec = _operating_point(y, p, threshold)
            if not np.isnan(prec):
                ax.plot([sens], [prec], **OPERATING_POINT,
                        label=f"threshold {threshold:.3g}: recall {sens:.2f}, precision {prec:.2f}")
        ax.legend(loc="lower left", fontsize=9)
    else:
        _undefined(ax, "PR curve undefined: no positives")
    _finish_unit_axes(ax, "Recall (sensitivity)", "Precision (PPV)", title)
    return save_figure(fig, path)


def plot_calibration(y: Any, prob: Any, path: str | Path, n_bins: int = 15, title: str | None = None,
                     names: Sequence[str] | None = None) -> Path:
    """Reliability diagram (fraction positive vs mean probability per bin) above a histogram of probabilities.
    `y`, `prob`: N values, or N x L (one panel per column, at most 6, titled by `names`: each class or label
    against the rest)."""
    ys, probs = np.asarray(y).reshape(len(y), -1), np.asarray(prob, dtype=np.float64).reshape(len(prob), -1)
    shown = min(probs.shape[1], 6)
    width, height = FIGSIZE["calibration"]
    fig = Figure(figsize=(width * shown, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    panels = fig.subplots(2, shown, sharex=True, height_ratios=[3, 1], squeeze=False)
    for k in range(shown):
        label = None if names is None or probs.shape[1] == 1 else str(names[k])
        _reliability_panel(panels[0, k], panels[1, k], ys[:, k], probs[:, k], n_bins,
                           f"{title}: {label}" if title and label else (label or title))
    return save_figure(fig, path)


def _reliability_panel(top: Any, bottom: Any, y: np.ndarray, prob: np.ndarray, n_bins: int,
                       title: str | None) -> None:
    curve = reliability_curve(y, prob, n_bins)
    ece = expected_calibration_error(y, prob, n_bins)
    top.plot([0, 1], [0, 1], color="#bbbbbb", linestyle="--", linewidth=1, label="perfect calibration")
    filled = curve["count"] > 0
    top.plot(curve["mean_prob"][filled], curve["frac_pos"][filled], marker="o", color="#1f77b4",
             linewidth=2, label=f"model (ECE = {ece:.3f}, {n_bins} bins)")
    top.legend(loc="upper left", fontsize=9)
    _finish_unit_axes(top, None, "Fraction positive", title)
    width = curve["upper"] - curve["lower"]
    bottom.bar(curve["lower"], curve["count"], width=width, align="edge", color="#9ecae1", edgecolor="white")
    bottom.set_xlabel("Predicted probability")
    bottom.set_ylabel("Images")
    bottom.set_xlim(0, 1)


def _finish_unit_axes(ax: Any, xlabel: str | None, ylabel: str, title: str | None) -> None:
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)


def plot_curves(history_df: Any, path: str | Path, kept_epoch: int | None = None,
                kept_metric: str | None = None) -> Path:
    """Training curves: train vs validation loss per epoch (left) and validation metrics (right).

    Reads the history.csv columns ``epoch,train_loss,val_loss,val_auc,val_f1,val_accuracy,...``; columns that
    are missing or empty are left out. `kept_epoch` (the one best.pt holds, chosen by `kept_metric`) is marked
    on both panels; without it, the epoch with the lowest validation loss is.
    """
    if "epoch" not in history_df.columns or len(history_df) == 0:
        raise MedclfError("history has no rows or no 'epoch' column; cannot plot training curves")
    epoch = history_df["epoch"].to_numpy()
    fig = _figure("curves")
    loss_ax, metric_ax = fig.subplots(1, 2)
    for (col, label), style in zip((("train_loss", "train"), ("val_loss", "validation")), CURVE_STYLES):
        if _has_values(history_df, col):
            loss_ax.plot(epoch, history_df[col], label=label, **style)
    if kept_epoch is not None:  # the checkpoint kept, on both panels: the metric that chose it may be either
        for ax in (loss_ax, metric_ax):
            ax.axvline(kept_epoch, color="#444444", linestyle="--", linewidth=1,
                       label=f"kept: epoch {kept_epoch} (best {kept_metric})")
    elif _has_values(history_df, "val_loss"):
        best = epoch[int(np.nanargmin(history_df["val_loss"].to_numpy(dtype=np.float64)))]
        loss_ax.axvline(best, color="#888888", linestyle=":", linewidth=1, label=f"lowest val loss (epoch {best})")
    _finish_curve_axes(loss_ax, "Loss", "Train vs validation loss")
    for col, style in zip(METRIC_COLUMNS, CURVE_STYLES):
        if _has_values(history_df, col):
            metric_ax.plot(epoch, history_df[col], label=col.removeprefix("val_"), **style)
    _finish_curve_axes(metric_ax, "Validation metric", "Validation metrics")
    return save_figure(fig, path)


def _has_values(df: Any, col: str) -> bool:
    return col in df.columns and df[col].notna().any()


def _finish_curve_axes(ax: Any, ylabel: str, title: str) -> None:
    ax.set_xlabel("Epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=9)
    # epochs are whole numbers
    ax.xaxis.get_major_locator().set_params(integer=True)


def plot_label_curves(y: Any, prob: Any, label_names: Sequence[str], thresholds: Sequence[float | None],
                      path: str | Path, kind: str = "roc", title: str | None = None) -> Path:
    """A multilabel run's ROC (`kind="roc"`) or precision-recall (`"pr"`) curves, one per label, each with its
    AUC and its operating point (none where the label's threshold is None: a multi-class run's classes);
    labels without both outcomes are named as undefined in the legend."""
    y, p = np.asarray(y), np.asarray(prob, dtype=np.float64)
    fig = _figure(kind)
    ax = fig.add_subplot()
    colours = matplotlib.colormaps["tab10"]
    if kind == "roc":
        ax.plot([0, 1], [0, 1], color="#bbbbbb", linestyle="--", linewidth=1)
    for k, name in enumerate(label_names):
        yk, pk, colour = y[:, k].astype(np.int8), p[:, k], colours(k % 10)
        if not 0 < yk.sum() < len(yk):
            ax.plot([], [], color=colour, label=f"{name}: undefined (one outcome only)")
            continue
        marked = thresholds[k] is not None
        sens, fp_rate, prec = _operating_point(yk, pk, float(thresholds[k])) if marked else (np.nan,) * 3
        if kind == "roc":
            fpr, tpr, _ = roc_curve(yk, pk)
            ax.plot(fpr, tpr, color=colour, linewidth=1.8, label=f"{name} (AUC {roc_auc_score(yk, pk):.3f})")
            if marked:
                ax.plot([fp_rate], [sens], "o", color=colour, markeredgecolor="black")
        else:
            precision, recall, _ = precision_recall_curve(yk, pk)
            ax.step(recall, precision, where="post", color=colour, linewidth=1.8,
                    label=f"{name} (AP {average_precision_score(yk, pk):.3f})")
            if not np.isnan(prec):
                ax.plot([sens], [prec], "o", color=colour, markeredgecolor="black")
    ax.legend(loc="lower right" if kind == "roc" else "lower left", fontsize=8)
    axes = (("False positive rate (1 - specificity)", "True positive rate (sensitivity)") if kind == "roc"
            else ("Recall (sensitivity)", "Precision (PPV)"))
    _finish_unit_axes(ax, *axes, title)
    return save_figure(fig, path)
