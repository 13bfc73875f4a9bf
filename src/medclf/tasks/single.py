"""Single-label tasks: `binary` (two classes, one positive) and `multiclass` (K > 2 classes, one per image).

Both read the logits with a softmax and call the positive class at the one operating threshold; otherwise the
likeliest other class. A multiclass run keeps the binary figures (its positive class against the rest) and adds
the K-class ones (`prob_<class>` columns, medclf.evaluation.multiclass).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from medclf.errors import ConfigError, DataError
from medclf.evaluation.caveats import metric_warnings
from medclf.evaluation.macro_auc import macro_roc_auc
from medclf.evaluation.metrics import binary_metrics
from medclf.evaluation.multiclass import multiclass_metrics
from medclf.evaluation.thresholds import OperatingThreshold
from medclf.losses import create_loss
from medclf.tasks.base import ATTACK_ROW_KEYS, PROB_EPS, ChosenThresholds, Task


class SingleLabelTask(Task):
    """One class per image; the positive class is called at the operating threshold."""

    @staticmethod
    def probabilities(logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits.float(), dim=-1)

    @staticmethod
    def logits(probs: torch.Tensor) -> torch.Tensor:
        return torch.log(probs.clamp_min(PROB_EPS))

    @staticmethod
    def log_odds(logits: torch.Tensor, index: int) -> torch.Tensor:
        """z_c - logsumexp(other logits): for two classes z_pos - z_neg, the quantity the threshold cuts."""
        rows = logits if logits.dim() == 2 else logits[None]
        others = torch.cat([rows[:, :index], rows[:, index + 1:]], dim=1)
        value = rows[:, index] - torch.logsumexp(others, dim=1)
        return value if logits.dim() == 2 else value[0]

    # ------------------------------------------------------------------ truth and thresholds
    def positive(self, labels: Any, index: int | None = None) -> np.ndarray:
        return np.asarray(labels) == (self.positive_index if index is None else int(index))

    def truth(self, labels: Any) -> np.ndarray:
        return self.positive(labels)[:, None].astype(np.int8)

    @property
    def scored(self) -> list[int]:
        return [self.positive_index]

    def operating_thresholds(self) -> np.ndarray:
        return np.array([self.threshold])

    def combine_choices(self, chosen: list[OperatingThreshold], warnings: list[list[str]]) -> ChosenThresholds:
        return ChosenThresholds([chosen[0].value], chosen[0].source, chosen[0].reason, list(warnings[0]))

    def store_thresholds(self, contract: Any, chosen: ChosenThresholds) -> None:
        self.threshold = contract.threshold = chosen.values[0]
        contract.threshold_source, contract.threshold_reason = chosen.source, chosen.reason
        contract.threshold_warnings = list(chosen.warnings)

    def threshold_fields(self, chosen: ChosenThresholds) -> dict[str, Any]:
        return {"threshold": chosen.values[0]}

    def threshold_entry(self) -> float:
        return self.threshold

    def decisions(self, probs: np.ndarray) -> list[str]:
        """The positive class where it is called; otherwise the likeliest other class."""
        probs = np.atleast_2d(probs)
        others = probs.astype(np.float64).copy()
        others[:, self.positive_index] = -np.inf
        called = np.where(self.calls(probs)[:, 0], self.positive_index, others.argmax(axis=1))
        return [self.label_names[int(k)] for k in called]

    # ------------------------------------------------------------------ predictions table
    def lead_column_names(self) -> list[str]:
        return ["prob", "predicted", "threshold"]

    def lead_columns(self, probs: np.ndarray) -> dict[str, Any]:
        return {"prob": probs[:, self.positive_index], "predicted": self.decisions(probs),
                "threshold": np.full(len(probs), self.threshold)}

    def spread(self, member_probs: np.ndarray) -> np.ndarray:
        return member_probs[:, :, self.positive_index].std(axis=0)

    # ------------------------------------------------------------------ metrics
    def metrics_entry(self, table: Any, split: str, n_boot: int = 1000, seed: int = 0, min_class: int = 10,
                      threshold_reason: str | None = None, notes: Sequence[str] = ()) -> dict[str, Any]:
        """binary_metrics of the positive class at the threshold, plus `split`, `positive_index`, `n_boot`,
        `threshold_reason`, `warnings`; a K-class table (`prob_<class>` for
        K > 2) adds `multiclass` (per-class metrics, averages, accuracy, kappa, the K x K confusion)."""
        y, prob = labelled_arrays(table, self.positive_index)
        metrics = binary_metrics(y, prob, self.threshold, n_boot=n_boot, seed=seed)
        metrics.update(split=split, positive_index=int(self.positive_index), n_boot=int(n_boot),
                       threshold_reason=threshold_reason, warnings=metric_warnings(metrics, min_class) + list(notes))
        probs = class_probs(table, self.label_names)
        if probs is not None:  # a K-class run; the binary keys stay: its positive class against the rest
            metrics["multiclass"] = multiclass_metrics(table["label"].to_numpy(), probs, self.label_names,
                                                       n_boot=n_boot, seed=seed)
        return metrics

    def plot_evaluation(self, table: Any, metrics: dict[str, Any], path_of: Any, title: str) -> None:
        from medclf.evaluation import plots  # matplotlib is only needed here

        y, prob = labelled_arrays(table, self.positive_index)
        t = self.threshold
        names = positive_negative_names(self.label_names, self.positive_index)
        plots.plot_confusion(metrics["tp"], metrics["fp"], metrics["fn"], metrics["tn"], path_of("confusion"), names,
                             title=f"{title} (threshold {t:.3g})")
        plots.plot_roc(y, prob, path_of("roc"), threshold=t, title=title)
        plots.plot_pr(y, prob, path_of("pr"), threshold=t, title=title)
        probs = class_probs(table, self.label_names)
        if probs is None:  # a two-class table, or one read as binary: the positive class alone
            plots.plot_calibration(y, prob, path_of("calibration"), title=title)
        else:  # each class against the rest, marked where it is the most probable class
            self.plot_reliability(table, path_of("calibration"), title)
            onehot = np.eye(probs.shape[1], dtype=np.int8)[table["label"].to_numpy()]
            plots.plot_label_curves(onehot, probs, self.label_names, [None] * probs.shape[1], path_of("roc_classes"),
                                    title=f"{title}: each class against the rest")

    def validation_row(self, labels: np.ndarray, probs: np.ndarray, loss_fn: Any, device: Any) -> dict[str, Any]:
        logp = self.logits(torch.from_numpy(probs))
        # val loss with the training loss function, so the two curves are comparable (the seed deck's graph)
        val_loss = float(loss_fn(logp.to(device), torch.from_numpy(labels).to(device)))
        y = self.truth(labels)[:, 0]
        m = binary_metrics(y, probs[:, self.positive_index], threshold=0.5, n_boot=0)
        return {"val_loss": val_loss, "val_auc": m["roc_auc"], "val_f1": m["f1"], "val_accuracy": m["accuracy"]}

    def validation_auc(self, labels: np.ndarray, probs: np.ndarray) -> float | None:
        from sklearn.metrics import roc_auc_score

        y = self.truth(labels)[:, 0]
        return float(roc_auc_score(y, probs[:, self.positive_index])) if 0 < y.sum() < len(y) else None

    def auc_with_ci(self, labels: np.ndarray, probs: np.ndarray, n_boot: int = 1000) -> dict[str, Any]:
        m = binary_metrics(self.truth(labels)[:, 0], probs[:, self.positive_index], self.threshold, n_boot=n_boot)
        return {"roc_auc": m["roc_auc"], "ci": m["ci"]["roc_auc"]}

    # ------------------------------------------------------------------ training options and losses
    def check_options(self, cfg: Any, where: Any) -> None:
        if cfg.loss.pos_weight:
            raise ConfigError("loss.pos_weight: weighs each label of a multilabel task; a single-label task uses "
                              "loss.class_balanced=true")

    def loss_params(self, lc: Any) -> dict[str, Any]:
        """The LossConfig fields each single-label loss takes (the config keeps one flat section for all)."""
        return {"focal": {"gamma": lc.gamma, "alpha": lc.alpha, "class_balanced": lc.class_balanced, "beta": lc.beta,
                          "positive_index": self.positive_index},
                "ce": {"label_smoothing": lc.label_smoothing, "class_balanced": lc.class_balanced, "beta": lc.beta},
                "soft_f1": {"positive_index": self.positive_index}}.get(lc.name, {})

    def create_loss(self, loss_cfg: Any, train_labels: np.ndarray) -> torch.nn.Module:
        counts = self.label_counts(train_labels)
        return create_loss(loss_cfg.name, num_classes=self.k, class_counts=counts.tolist(),
                           **self.loss_params(loss_cfg))

    # ------------------------------------------------------------------ attack, serve
    def attack_rows(self, labels: np.ndarray, probs: dict[float, np.ndarray], n_boot: int,
                    seed: int) -> tuple[list[dict], int]:
        """One row per eps on the positive class at the run's threshold (and the K-class figures)."""
        pos = self.positive_index
        y = self.truth(labels)[:, 0]
        clean_call = self.calls(probs[0.0])[:, 0]
        rows = []
        for e, p in probs.items():
            m = binary_metrics(y, p[:, pos], threshold=self.threshold, n_boot=n_boot, seed=seed)
            nll = -np.log(np.clip(p[np.arange(len(y)), labels], PROB_EPS, None)).mean()
            rows.append({"eps": e, "eps_255": round(e * 255, 6), **{k: m[k] for k in ATTACK_ROW_KEYS},
                         "loss": float(nll), "flip_rate": float(np.mean(self.calls(p)[:, 0] != clean_call)),
                         "ci": {k: m["ci"].get(k) for k in ATTACK_ROW_KEYS if k in (m.get("ci") or {})},
                         **self.class_figures(labels, p)})
        return rows, int(y.sum())

    def class_figures(self, labels: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
        """The K-class figures of an attack row (none for a binary run: its rows keep their keys)."""
        return {}

    def serve_fields(self, probs: np.ndarray, columns: dict[str, Any]) -> dict[str, Any]:
        focus = self.focus(probs)
        return {"probability": float(probs[focus]), "positive": columns["predicted"] == self.label_names[focus],
                "positive_label": self.label_names[focus], "threshold": self.threshold}


class BinaryTask(SingleLabelTask):
    """Two classes, one of them positive: the seed's task. Maps explain the positive class."""

    name = "binary"

    def default_targets(self, probs: np.ndarray) -> np.ndarray:
        return np.full(len(probs), self.positive_index, dtype=np.int64)

    def caption_mark(self, target: int, prob: float) -> str:
        called = target == self.positive_index and bool(self.calls(self._one_hot(prob))[0, 0])
        return " +" if called else ""

    def _one_hot(self, prob: float) -> np.ndarray:
        """A 1 x K row whose positive column is `prob` (the caption has only the drawn class's probability)."""
        row = np.zeros((1, self.k or self.positive_index + 1))
        row[0, self.positive_index] = prob
        return row

    def explain_columns(self, columns: list[str]) -> list[str]:
        return list(columns)

    def table_probs(self, table: Any) -> np.ndarray:
        """N x 2 from the table's `prob` (the positive class; the other is 1 - prob, as the softmax's two sum to 1)."""
        full = np.empty((len(table), 2))
        full[:, self.positive_index] = table["prob"].to_numpy(dtype=np.float64)
        full[:, 1 - self.positive_index] = 1.0 - full[:, self.positive_index]
        return full

    def compared_classes(self, names: list[str]) -> list[str]:
        """None: a binary run is compared on its positive class (a K-class table read as binary keeps its K)."""
        return names if len(names) > 2 else []


class MulticlassTask(SingleLabelTask):
    """K > 2 classes, one per image. Maps explain the predicted class (the call the model made)."""

    name = "multiclass"

    def default_targets(self, probs: np.ndarray) -> np.ndarray:
        return probs.argmax(axis=1).astype(np.int64)

    def class_column_names(self) -> list[str]:
        return [f"prob_{n}" for n in self.label_names]

    @property
    def curve_columns(self) -> list[int]:
        """Every class against the rest (the positive class at the run's threshold; the others have none)."""
        return list(range(self.k))

    def class_columns(self, probs: np.ndarray) -> dict[str, Any]:
        return {f"prob_{n}": probs[:, k] for k, n in enumerate(self.label_names)}

    def macro_scope(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return metrics.get("multiclass") or {}

    def class_figures(self, labels: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
        return {"class_accuracy": float(np.mean(probs.argmax(axis=1) == labels)),
                "macro_roc_auc": macro_roc_auc(labels, np.clip(probs, 0.0, 1.0))}


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


def class_probs(pred_df: Any, label_names: Sequence[str] | None) -> np.ndarray | None:
    """The `prob_<class>` columns of a K-class (K > 2) predictions table as an N x K array; None for a binary run
    or a table without them."""
    columns = [f"prob_{name}" for name in label_names or ()]
    if len(columns) <= 2 or any(c not in pred_df.columns for c in columns):
        return None
    return pred_df[columns].to_numpy(dtype=np.float64)


def positive_negative_names(label_names: Sequence[str] | None, positive_index: int) -> tuple[str, str]:
    if not label_names or not 0 <= positive_index < len(label_names):
        return ("positive", "negative")
    positive = str(label_names[positive_index])
    if len(label_names) == 2:
        return (positive, str(label_names[1 - positive_index]))
    return (positive, f"not {positive}")
