"""The multilabel task: K findings, any subset per image (none included), a sigmoid per logit and an operating
threshold per label. Its truth is one bit mask per image (medclf.labelsets).

"Positive" for an image means it holds a finding (any, or the one asked about): `explain --score` scores the
images holding the explained finding, not the class index the bit mask happens to equal. A map explains the
most probable finding (the one the model is surest of, the one the service's bar shows).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Sequence

import numpy as np
import torch

from medclf.errors import ConfigError, DataError
from medclf.evaluation.caveats import metric_warnings
from medclf.evaluation.conformal import class_scores, conformal_quantile
from medclf.evaluation.macro_auc import macro_roc_auc
from medclf.evaluation.multilabel import average_rates, multilabel_metrics
from medclf.evaluation.temperature import enough_per_class, fit_one_temperature
from medclf.evaluation.thresholds import SOURCE_DATA, SOURCE_DEFAULT, OperatingThreshold
from medclf.labelsets import BitMasks, encode_multi_hot, label_set_name, multi_hot
from medclf.losses import create_multilabel_loss, multi_hot_target
from medclf.tasks.base import ATTACK_ROW_KEYS, PROB_EPS, ChosenThresholds, Task, sigmoid_nll


class MultilabelTask(Task):
    """K independent findings, each called at its own threshold."""

    name = "multilabel"
    coding = BitMasks

    @staticmethod
    def probabilities(logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits.float())

    @staticmethod
    def logits(probs: torch.Tensor) -> torch.Tensor:
        return torch.logit(probs.double().clamp(PROB_EPS, 1.0 - PROB_EPS)).to(probs.dtype)

    @staticmethod
    def log_odds(logits: torch.Tensor, index: int) -> torch.Tensor:
        """A sigmoid's log-odds is its own logit: the other findings do not compete with this one."""
        return logits[..., index]

    # ------------------------------------------------------------------ truth and thresholds
    def truth(self, labels: Any) -> np.ndarray:
        return multi_hot(labels, self.k).astype(np.int8)

    def macro_truth(self, labels: Any) -> np.ndarray:
        return multi_hot(labels, self.k)

    def positive(self, labels: Any, index: int | None = None) -> np.ndarray:
        hot = multi_hot(labels, self.k).astype(bool)
        return np.asarray(hot.any(axis=1) if index is None else hot[:, int(index)])

    @property
    def scored(self) -> list[int]:
        return list(range(self.k))

    def operating_thresholds(self) -> np.ndarray:
        """Each label's threshold (0.5 where none was chosen)."""
        return np.asarray(self.stored_thresholds if self.stored_thresholds is not None else [0.5] * self.k)

    def combine_choices(self, chosen: list[OperatingThreshold], warnings: list[list[str]]) -> ChosenThresholds:
        """The source is "validation" only when every label's threshold was fitted."""
        names = self.label_names
        fitted = all(c.source == SOURCE_DATA for c in chosen)
        return ChosenThresholds([c.value for c in chosen], SOURCE_DATA if fitted else SOURCE_DEFAULT,
                                "; ".join(f"{name}: {c.reason}" for name, c in zip(names, chosen)),
                                [f"{name}: {w}" for name, ws in zip(names, warnings) for w in ws])

    def store_thresholds(self, contract: Any, chosen: ChosenThresholds) -> None:
        self.stored_thresholds = contract.thresholds = list(chosen.values)
        contract.threshold_source, contract.threshold_reason = chosen.source, chosen.reason
        contract.threshold_warnings = list(chosen.warnings)

    def threshold_fields(self, chosen: ChosenThresholds) -> dict[str, Any]:
        return {"threshold": 0.5, "thresholds": list(chosen.values)}  # `threshold` is unused here

    def threshold_entry(self) -> list[float] | None:
        return self.stored_thresholds

    def decisions(self, probs: np.ndarray) -> list[str]:
        """The labels called, each at its own threshold, joined by `|` (`No Finding` when none is)."""
        return [label_set_name(m, self.label_names) for m in encode_multi_hot(self.calls(probs))]

    # ------------------------------------------------------------------ predictions table
    def lead_column_names(self) -> list[str]:
        """No single positive class: a probability and a call per label, then the labels called."""
        names = self.label_names
        return [f"prob_{n}" for n in names] + [f"pred_{n}" for n in names] + ["predicted"]

    def lead_columns(self, probs: np.ndarray) -> dict[str, Any]:
        called = self.calls(probs)
        out: dict[str, Any] = {f"prob_{n}": probs[:, k] for k, n in enumerate(self.label_names)}
        out.update({f"pred_{n}": called[:, k].astype(np.int8) for k, n in enumerate(self.label_names)})
        out["predicted"] = self.decisions(probs)
        return out

    def truth_columns(self, labels: Any) -> dict[str, Any]:
        """`labels`: the truth's findings (the bit mask in `label` spelled out)."""
        return {"labels": self.label_texts(labels)}

    def spread(self, member_probs: np.ndarray) -> np.ndarray:
        """The largest members' std over the labels."""
        return member_probs.std(axis=0).max(axis=1)

    # ------------------------------------------------------------------ metrics
    def metrics_entry(self, table: Any, split: str, n_boot: int = 1000, seed: int = 0, min_class: int = 10,
                      threshold_reason: str | None = None, notes: Sequence[str] = ()) -> dict[str, Any]:
        """Per label and averaged (medclf.evaluation.multilabel), with `task`, `roc_auc` = the macro ROC AUC,
        `n_boot`, `threshold_reason`, `warnings` (each label's `metric_warnings`, prefixed with its name)."""
        probs = label_probs(table, self.label_names)
        metrics = {"task": "multilabel", "split": split, "n_boot": int(n_boot), "threshold_reason": threshold_reason,
                   **multilabel_metrics(table["label"].to_numpy(), probs, self.label_names,
                                        list(self.operating_thresholds()), n_boot=n_boot, seed=seed)}
        metrics["roc_auc"] = metrics["macro"]["roc_auc"]
        metrics["warnings"] = [f"{name}: {w}" for name, m in metrics["per_label"].items()
                               for w in metric_warnings(m, min_class)] + list(notes)
        return metrics

    def plot_evaluation(self, table: Any, metrics: dict[str, Any], path_of: Any, title: str) -> None:
        from medclf.evaluation import plots  # matplotlib is only needed here

        probs = label_probs(table, self.label_names)
        y = self.truth(table["label"].to_numpy())
        for kind in ("roc", "pr"):
            plots.plot_label_curves(y, probs, self.label_names, list(self.operating_thresholds()), path_of(kind),
                                    kind=kind, title=title)
        self.plot_reliability(table, path_of("calibration"), title)

    def validation_row(self, labels: np.ndarray, probs: np.ndarray, loss_fn: Any, device: Any) -> dict[str, Any]:
        """`val_auc` is the macro ROC AUC over labels, `val_f1` the macro F1 and `val_accuracy` the share of
        correct image-label calls, each label called at 0.5."""
        logits = self.logits(torch.from_numpy(probs))
        val_loss = float(loss_fn(logits.to(device), torch.from_numpy(labels).to(device)))
        y = self.truth(labels)
        called = probs >= 0.5  # training's tracked point, not the operating thresholds (chosen after training)
        auc = macro_roc_auc(y, probs, skip_undefined=True)
        return {"val_loss": val_loss, "val_auc": math.nan if auc is None else auc,
                "val_f1": average_rates(y, called, "macro")["f1"], "val_accuracy": float((called == y).mean())}

    def validation_auc(self, labels: np.ndarray, probs: np.ndarray) -> float | None:
        return macro_roc_auc(self.truth(labels), probs, skip_undefined=True)

    def auc_with_ci(self, labels: np.ndarray, probs: np.ndarray, n_boot: int = 1000) -> dict[str, Any]:
        m = multilabel_metrics(labels, probs, self.label_names, list(self.operating_thresholds()), n_boot=n_boot)
        return {"roc_auc": m["macro"]["roc_auc"], "ci": m["ci"]["macro_roc_auc"]}

    def headline(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """The macro averages over findings (each at its own threshold: no single threshold or positive count)."""
        return {**metrics, **(metrics.get("macro") or {}), "n_pos": None, "threshold": None,
                "ci": {"roc_auc": (metrics.get("ci") or {}).get("macro_roc_auc")}}

    def macro_scope(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return metrics

    # ------------------------------------------------------------------ calibration and the refer band
    def fit_temperature(self, labels: Any, probs: np.ndarray, min_class: int = 1) -> list[float]:
        """One temperature per label, each for its own sigmoid; 1.0 where the label's presence or absence has
        fewer than `min_class` images."""
        y, z = self.truth(labels), self._logits64(probs)
        return [fit_one_temperature(partial(sigmoid_nll, z[:, k], y[:, k]))
                if enough_per_class(y[:, k], 2, min_class) else 1.0 for k in range(self.k)]

    def log_loss(self, labels: Any, probs: np.ndarray) -> float:
        """Binary cross-entropy averaged over images and labels."""
        y, z = self.truth(labels), self._logits64(probs)
        return float(np.mean([sigmoid_nll(z[:, k], y[:, k], 1.0) for k in range(self.k)]))

    band_guarantee = "per label, marginal over images (not joint over labels)"

    def fit_band(self, labels: Any, probs: np.ndarray, alpha: float, score: str = "lac") -> dict[str, Any]:
        """Each label a two-status problem (absent, present) with the `lac` score and its own quantile: the
        guarantee holds per label, not jointly (that would need alpha / K per label, Bonferroni)."""
        y, p = self.truth(labels).astype(bool), np.asarray(probs, dtype=np.float64)
        s = class_scores(np.where(y, p, 1.0 - p), "lac")  # each label's true status
        return {"alpha": float(alpha), "score": "lac", "n": int(len(y)),
                "qhat": [conformal_quantile(s[:, k], alpha) for k in range(self.k)]}

    def prediction_sets(self, probs: np.ndarray, band: dict[str, Any]) -> np.ndarray:
        return class_scores(two_status(probs), "lac") <= np.asarray(band["qhat"])[None, :, None]

    def set_covers(self, sets: np.ndarray, labels: Any) -> np.ndarray:
        return np.take_along_axis(sets, self.truth(labels).astype(np.int64)[:, :, None], axis=2)[:, :, 0]

    def set_members(self, sets: np.ndarray) -> np.ndarray:
        """The labels whose status is uncertain (both, or neither, in the set)."""
        return sets.sum(axis=-1) != 1

    # ------------------------------------------------------------------ training options and losses
    def check_options(self, cfg: Any, where: Any) -> None:
        single = {"train.adversarial": cfg.train.adversarial, "train.contrastive": cfg.train.contrastive}
        for key, value in single.items():
            if value:
                raise ConfigError(f"{key}={value}: defined for single-label tasks; {where} is multilabel "
                                  f"(drop {key})")
        if cfg.loss.class_balanced:
            raise ConfigError("loss.class_balanced: weighs classes of a single-label task; a multilabel task "
                              "weighs each label's positives with loss.pos_weight=true")

    def loss_params(self, lc: Any) -> dict[str, Any]:
        """The LossConfig fields each multilabel loss (medclf.losses.MULTILABEL_LOSSES) takes."""
        return {"focal": {"gamma": lc.gamma, "alpha": lc.alpha},
                "asl": {"gamma_neg": lc.gamma_neg, "gamma_pos": lc.gamma_pos, "clip": lc.clip}}.get(lc.name, {})

    def create_loss(self, loss_cfg: Any, train_labels: np.ndarray) -> torch.nn.Module:
        return create_multilabel_loss(loss_cfg.name, self.k, self.label_counts(train_labels).tolist(),
                                      len(train_labels), pos_weight=loss_cfg.pos_weight, **self.loss_params(loss_cfg))

    def check_subgroups(self, by: Sequence[str], where: Any) -> None:
        if by:
            raise DataError(f"--by: subgroups are reported for single-label runs; {where} is multilabel")

    # ------------------------------------------------------------------ explain, attack, serve
    def default_targets(self, probs: np.ndarray) -> np.ndarray:
        return probs.argmax(axis=1).astype(np.int64)

    def attack_target(self, labels: torch.Tensor) -> torch.Tensor:
        """The attacks' loss reads a 0/1 matrix as a multi-label truth."""
        return multi_hot_target(labels, self.k)

    def attack_rows(self, labels: np.ndarray, probs: dict[float, np.ndarray], n_boot: int,
                    seed: int) -> tuple[list[dict], int]:
        """The macro averages over findings (each at its own threshold), `accuracy` the share of right
        image-finding calls, `flip_rate` the share of images whose called findings changed, `loss` the mean
        binary cross-entropy summed over findings; and the images with a finding."""
        y = self.truth(labels)
        clean_calls = self.calls(probs[0.0])
        rows = []
        for e, p in probs.items():
            m = multilabel_metrics(labels, p, self.label_names, list(self.operating_thresholds()), n_boot=n_boot,
                                   seed=seed)
            clipped = np.clip(p.astype(np.float64), PROB_EPS, 1 - PROB_EPS)
            bce = -(y * np.log(clipped) + (1 - y) * np.log(1 - clipped)).sum(axis=1).mean()
            calls = self.calls(p)
            rows.append({"eps": e, "eps_255": round(e * 255, 6),
                         **{k: m["macro"][k] for k in ATTACK_ROW_KEYS if k in m["macro"]},
                         "accuracy": float((calls == y.astype(bool)).mean()), "loss": float(bce),
                         "flip_rate": float(np.mean((calls != clean_calls).any(axis=1))),
                         "ci": {"roc_auc": m["ci"]["macro_roc_auc"]}})
        return rows, int(self.positive(labels).sum())

    def attack_point(self) -> dict[str, Any]:
        return {"threshold": float(self.threshold), "thresholds": [float(t) for t in self.operating_thresholds()]}

    @property
    def example_class(self) -> int | None:
        return None  # the examples figure shows one class's probability

    def focus(self, probs: np.ndarray) -> int:
        """The likeliest label: the one the page's bar shows and the map explains."""
        return int(np.argmax(probs))

    def serve_fields(self, probs: np.ndarray, columns: dict[str, Any]) -> dict[str, Any]:
        """The likeliest label in the bar; `called` lists every label called, `thresholds` each label's."""
        focus = self.focus(probs)
        thresholds = self.operating_thresholds()
        return {"probability": float(probs[focus]), "positive": bool(self.calls(probs)[0, focus]),
                "positive_label": self.label_names[focus], "threshold": float(thresholds[focus]),
                "called": [n for n in self.label_names if columns[f"pred_{n}"]],
                "thresholds": dict(zip(self.label_names, [float(t) for t in thresholds]))}


def two_status(probs: np.ndarray) -> np.ndarray:
    """N x K label probabilities -> N x K x 2 (absent, present): each label as a two-class problem."""
    p = np.asarray(probs, dtype=np.float64)
    return np.stack([1.0 - p, p], axis=-1)


def label_probs(table: Any, label_names: Sequence[str]) -> np.ndarray:
    return table[[f"prob_{n}" for n in label_names]].to_numpy(dtype=np.float64)
