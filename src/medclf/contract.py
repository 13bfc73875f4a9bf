"""The data contract a model carries (DESIGN habit 2): what it expects as input and what its outputs mean.

Transforms are derived from it, checkpoints store it as a plain dict, and inference reads the label names,
the positive class and the operating threshold from it. (timm `pretrained_cfg`; torchxrayvision `op_threshs`.)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from medclf.errors import ConfigError
from medclf.labelsets import task_of


@dataclass
class DataContract:
    model_name: str
    num_classes: int
    label_names: list[str]
    positive_index: int
    input_size: int
    in_chans: int
    mean: list[float]
    std: list[float]
    threshold: float = 0.5
    ood: dict | None = field(default=None)
    # why the threshold is what it is (None in checkpoints older than these fields): source "validation"
    # (fitted) or "default" (fallback), a sentence, and why the validation figures behind it may mean nothing
    threshold_source: str | None = None
    threshold_reason: str | None = None
    threshold_warnings: list[str] = field(default_factory=list)
    # binary / multiclass / multilabel (medclf.tasks); None in older checkpoints, read from num_classes
    task: str | None = None
    # multilabel: one operating threshold per label, chosen on validation (`threshold` is then unused)
    thresholds: list[float] | None = None
    # temperature scaling (medclf.evaluation.temperature): one T, or one per label for multilabel; None = off.
    # The inference graph divides the logits of the probabilities by it, before any threshold applies.
    temperature: list[float] | None = None
    # split-conformal band (Task.fit_band): alpha, score, qhat, n, fitted_on
    conformal: dict | None = None
    # the decisions on the images the threshold was chosen on (medclf.evaluation.shift): split, n and, per scored
    # column, [tp, fn, tn, fp]; what `evaluate` compares another set's sensitivity and specificity with
    operating_point: dict | None = None

    def __post_init__(self) -> None:
        try:
            self.task = task_of(self.label_names, self.task)
        except ValueError as err:
            raise ConfigError(f"contract: {err}") from None
        if self.thresholds is not None and len(self.thresholds) != self.num_classes:
            raise ConfigError(f"contract: {len(self.thresholds)} thresholds for {self.num_classes} labels")
        if self.temperature is not None and (len(self.temperature) not in (1, self.num_classes)
                                             or min(self.temperature) <= 0):
            raise ConfigError(f"contract: temperature must be 1 or {self.num_classes} positive values, "
                              f"got {self.temperature}")
        if self.num_classes < 2:
            raise ConfigError(f"contract: num_classes must be >= 2 (models output K >= 2 logits), "
                              f"got {self.num_classes}")
        if len(self.label_names) != self.num_classes:
            raise ConfigError(
                f"contract: {len(self.label_names)} label_names {self.label_names} for num_classes={self.num_classes}"
            )
        if not 0 <= self.positive_index < self.num_classes:
            raise ConfigError(f"contract: positive_index {self.positive_index} is not in [0, {self.num_classes - 1}]")
        if self.in_chans not in (1, 3):
            raise ConfigError(f"contract: in_chans must be 1 or 3, got {self.in_chans}")
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ConfigError(f"contract: mean/std need {self.in_chans} values, got {self.mean} / {self.std}")
        if self.input_size < 1:
            raise ConfigError(f"contract: input_size must be positive, got {self.input_size}")

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types only (a checkpoint read with `torch.load(weights_only=True)` can hold it)."""
        return {
            "model_name": str(self.model_name),
            "num_classes": int(self.num_classes),
            "label_names": [str(n) for n in self.label_names],
            "positive_index": int(self.positive_index),
            "input_size": int(self.input_size),
            "in_chans": int(self.in_chans),
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "threshold": float(self.threshold),
            "ood": None if self.ood is None else dict(self.ood),
            "threshold_source": None if self.threshold_source is None else str(self.threshold_source),
            "threshold_reason": None if self.threshold_reason is None else str(self.threshold_reason),
            "threshold_warnings": [str(w) for w in self.threshold_warnings],
            "task": str(self.task),
            "thresholds": None if self.thresholds is None else [float(t) for t in self.thresholds],
            "temperature": None if self.temperature is None else [float(t) for t in self.temperature],
            "conformal": None if self.conformal is None else dict(self.conformal),
            "operating_point": None if self.operating_point is None else dict(self.operating_point),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataContract:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"contract: unknown keys {unknown} (valid: {sorted(names)})")
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(d))
        if missing:
            raise ConfigError(f"contract: missing keys {missing}")
        return cls(
            model_name=str(d["model_name"]),
            num_classes=int(d["num_classes"]),
            label_names=[str(n) for n in d["label_names"]],
            positive_index=int(d["positive_index"]),
            input_size=int(d["input_size"]),
            in_chans=int(d["in_chans"]),
            mean=[float(v) for v in d["mean"]],
            std=[float(v) for v in d["std"]],
            threshold=float(d.get("threshold", 0.5)),
            ood=None if d.get("ood") is None else dict(d["ood"]),
            threshold_source=d.get("threshold_source"),
            threshold_reason=d.get("threshold_reason"),
            threshold_warnings=[str(w) for w in d.get("threshold_warnings") or []],
            task=d.get("task"),
            thresholds=None if d.get("thresholds") is None else [float(t) for t in d["thresholds"]],
            temperature=None if d.get("temperature") is None else [float(t) for t in d["temperature"]],
            conformal=None if d.get("conformal") is None else dict(d["conformal"]),
            operating_point=None if d.get("operating_point") is None else dict(d["operating_point"]),
        )

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel"

    def label_thresholds(self) -> list[float]:
        """Per-label operating thresholds of a multilabel contract (0.5 where none was chosen)."""
        return list(self.thresholds) if self.thresholds is not None else [0.5] * self.num_classes
