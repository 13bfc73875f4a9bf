"""Figures of the robustness commands: metrics against eps, and adversarial examples."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medclf.io import atomic_path

METRICS = (("accuracy", "Accuracy"), ("f1", "F1"), ("roc_auc", "ROC AUC"))


def _figure(*args, **kwargs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.subplots(*args, **kwargs)


def plot_robustness(entries: list[dict], out: Path) -> None:
    """One panel per metric, one line per (method, split) entry; x is eps in grey levels (/255)."""
    plt, (fig, axes) = _figure(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.4))
    for ax, (key, label) in zip(np.atleast_1d(axes), METRICS):
        for e in entries:
            xs = [r["eps_255"] for r in e["rows"]]
            ys = [np.nan if r[key] is None else r[key] for r in e["rows"]]
            steps = f", {e['steps']} steps" if e["method"] == "pgd" else ""
            ax.plot(xs, ys, marker="o", label=f"{e['method']}{steps} ({e['split']})")
        ax.set_xlabel("eps (grey levels of 255)")
        ax.set_ylabel(label)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.suptitle("Metrics under L-inf attack (clean operating threshold)")
    fig.tight_layout()
    _save(plt, fig, out)


def plot_attack_examples(examples: list[dict], contract, method: str, eps: float, out: Path) -> None:
    """Rows: images. Columns: clean, perturbation (amplified to the full grey range), adversarial."""
    plt, (fig, axes) = _figure(len(examples), 3, figsize=(7.5, 2.6 * len(examples)), squeeze=False)
    positive = contract.label_names[contract.positive_index]
    for row, ex in zip(axes, examples):
        delta = ex["adv"] - ex["clean"]
        scale = max(float(np.abs(delta).max()), 1e-12)
        label = contract.label_names[ex["label"]]
        row[0].imshow(ex["clean"], cmap="gray", vmin=0, vmax=1)
        row[0].set_title(f"{ex['id']} ({label})\nclean p({positive})={ex['p_clean']:.3f}", fontsize=8)
        row[1].imshow(delta / scale, cmap="seismic", vmin=-1, vmax=1)
        row[1].set_title(f"perturbation x{1 / scale:.0f}\n(max {scale * 255:.2f}/255)", fontsize=8)
        row[2].imshow(ex["adv"], cmap="gray", vmin=0, vmax=1)
        row[2].set_title(f"{method} eps={eps * 255:g}/255\np({positive})={ex['p_adv']:.3f}", fontsize=8)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    _save(plt, fig, out)


def _save(plt, fig, out: Path) -> None:
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
