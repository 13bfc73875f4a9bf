"""Forest plot of ROC AUC per subgroup (`evaluate --by`): one line per group with its 95% interval, a dashed
reference line at the overall AUC, and groups too small to measure written out as "too small (n=..)"."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medclf.evaluation.plots import DPI, OPERATING_POINT, save_figure

ROW_INCHES = 0.32  # height per line, so a figure with many groups stays readable


def forest_lines(columns: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[tuple[str, Mapping[str, Any] | None]]:
    """(label, row) from top to bottom: a heading line per column (row None), then its groups."""
    lines: list[tuple[str, Mapping[str, Any] | None]] = []
    for column, rows in columns.items():
        lines.append((column, None))
        lines += [(f"  {row['group']} (n={row['n']}, {row['n_pos']} pos)", row) for row in rows]
    return lines


def plot_forest(columns: Mapping[str, Sequence[Mapping[str, Any]]], overall_auc: float | None,
                path: str | Path, title: str | None = None) -> Path:
    """AUC and interval per group (rows as `subgroup_rows` returns them, keyed by column), written as PNG."""
    lines = forest_lines(columns)
    fig = Figure(figsize=(7.0, 1.2 + ROW_INCHES * len(lines)), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for y, (_label, row) in enumerate(lines):
        auc = (row.get("metrics") or {}).get("roc_auc") if row else None
        if row is None:
            continue
        if row["too_small"] or auc is None:
            why = f"too small (n={row['n']})" if row["too_small"] else "AUC undefined"
            ax.text(0.02, y, why, va="center", fontsize=9, color="0.4", transform=ax.get_yaxis_transform())
            continue
        ci = (row["metrics"].get("ci") or {}).get("roc_auc")
        if ci:
            ax.plot(ci, [y, y], color="#1f77b4", linewidth=2)
        ax.plot([auc], [y], **{**OPERATING_POINT, "color": "#1f77b4", "marker": "s", "markersize": 6})
    if overall_auc is not None:
        ax.axvline(overall_auc, color="0.3", linestyle="--", linewidth=1, label=f"overall AUC {overall_auc:.3f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(range(len(lines)), [label for label, _ in lines], fontsize=9)
    for tick, (_, row) in zip(ax.get_yticklabels(), lines):
        tick.set_fontweight("bold" if row is None else "normal")
    ax.set_ylim(len(lines) - 0.5, -0.5)  # first line at the top
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("ROC AUC (95% bootstrap interval)")
    ax.grid(axis="x", alpha=0.3)
    if title:
        ax.set_title(title)
    return save_figure(fig, path)
