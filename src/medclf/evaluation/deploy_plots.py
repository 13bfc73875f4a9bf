"""The decision-curve figure (net benefit over threshold probability), read from the table `evaluate` writes."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from medclf.evaluation.plots import CURVE_STYLES, DPI, OPERATING_POINT, save_figure


def plot_decision_curve(table: pd.DataFrame, path: str | Path, operating: Mapping[str, float | None],
                        title: str | None = None) -> Path:
    """One panel per label (at most 6 shown): the model's net benefit, treat all and treat none, and the run's
    operating threshold marked where the label has one. The y axis starts just below 0, since the interesting
    part is where the model beats both references."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = list(dict.fromkeys(table["label"]))[:6]
    fig = Figure(figsize=(5.0 * len(labels), 4.5), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(1, len(labels), squeeze=False)[0])
    for ax, label in zip(axes, labels):
        rows = table[table["label"] == label]
        pt = rows["threshold"].to_numpy()
        ax.plot(pt, rows["net_benefit"], **{**CURVE_STYLES[0], "marker": None}, label="model")
        ax.plot(pt, rows["treat_all"], color="#7f7f7f", linestyle="--", label="treat all")
        ax.axhline(0.0, color="#000000", linewidth=1, label="treat none")
        at = operating.get(label)
        if at is not None and 0.0 < at < 1.0:
            nearest = int(np.argmin(np.abs(pt - at)))
            ax.plot([pt[nearest]], [rows["net_benefit"].iloc[nearest]], **OPERATING_POINT,
                    label=f"operating threshold {at:.3g}")
        top = max(float(rows["net_benefit"].max()), float(rows["treat_all"].max()), 0.01)
        ax.set_ylim(-0.05 * top - 0.01, top * 1.1)
        ax.set_xlim(0, 1)
        ax.set_xlabel("Threshold probability")
        ax.set_ylabel("Net benefit")
        ax.set_title(f"{title}: {label}" if title else str(label), fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    return save_figure(fig, path)
