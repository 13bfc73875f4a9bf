"""The Predictor: the one path from uint8 images (or image files) to probabilities, decisions, member spread and
out-of-distribution scores. Every command that needs probabilities asks a Predictor: evaluate, predict, serve,
explain, attack, ood, export, ensemble finalisation and the threshold choice at the end of training.

It runs `InferenceModule` (medclf.runs.graph) on one of two backends with the same interface: eager PyTorch
(`engine="torch"`) or ONNX Runtime (`engine="onnx"`, the same module exported). The flip test-time
augmentation is a property of the run (`eval.tta_flip`): the threshold was chosen with it, so every
prediction applies it too.

Out-of-distribution: a run whose members carry a Mahalanobis detector (fitted when training ends) gets an
`ood_score` per image and a flag `ood = ood_score > ood_threshold`. For one model the score is the detector's
own (squared Mahalanobis distance) and the threshold its stored one; for an ensemble the score is the median
over members of score_i / threshold_i and the threshold 1 (flagged when most members flag it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from medclf.contract import DataContract
from medclf.device import autocast, pick_device
from medclf.errors import MedclfError
from medclf.models.ensemble import is_ensemble
from medclf.runs.graph import InferenceModule
from medclf.runs.refer import REFER_COLUMNS
from medclf.tasks import Task, make_task, task_for

ENGINES = ("torch", "onnx", "onnx-int8")


@dataclass
class Prediction:
    """Outputs for N images: `probs` `N x K`, `member_probs` `M x N x K`, `ood_scores` `N x M` or None."""

    probs: np.ndarray
    member_probs: np.ndarray
    ood_scores: np.ndarray | None = None

    @classmethod
    def concat(cls, parts: list[Prediction]) -> Prediction:
        ood = None if parts[0].ood_scores is None else np.concatenate([p.ood_scores for p in parts])
        return cls(np.concatenate([p.probs for p in parts]), np.concatenate([p.member_probs for p in parts], axis=1),
                   ood)


class EagerBackend:
    """The module in PyTorch on `device` (bf16 autocast on CUDA, as training validates)."""

    name = "torch"

    def __init__(self, module: InferenceModule, device: torch.device) -> None:
        self.module = module.to(device).eval()
        self.device = device

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> Prediction:
        with autocast(self.device, enabled=True):
            out = self.module(images.to(self.device, non_blocking=True))
        arrays = [o.float().cpu().numpy() for o in out]
        return Prediction(arrays[0], arrays[1], arrays[2] if len(arrays) > 2 else None)


class Predictor:
    """Probabilities and decisions of one model or ensemble, exactly as its operating threshold was chosen."""

    def __init__(self, model: torch.nn.Module, contract: DataContract, *, tta_flip: bool = False,
                 device: torch.device | str = "cpu", image_size: int | None = None, norm: str = "robust",
                 detectors: list[dict] | None = None, name: str | None = None) -> None:
        """A Predictor on a live model (training uses this); `Predictor.from_run` opens a trained run."""
        self.contract = contract
        self.device = torch.device(device) if isinstance(device, str) else device
        self.image_size = int(image_size or contract.input_size)
        self.norm = norm
        self.name = name or contract.model_name
        contracts = getattr(model, "member_contracts", None) or [contract]
        self.detectors = detectors if detectors is not None else [c.ood for c in contracts]
        self.module = InferenceModule(model, contract, tta_flip=tta_flip, detectors=self.detectors)
        self.backend = EagerBackend(self.module, self.device)

    @classmethod
    def from_run(cls, run, engine: str = "torch", tta_flip: bool | None = None, device: str | None = None,
                 threads: int | None = None) -> Predictor:
        """The Predictor of an opened run (`medclf.runs.open_run`); `engine` "torch", "onnx" or "onnx-int8" (the
        run's int8 file, whose contract carries the threshold(s) chosen on its own probabilities)."""
        if engine not in ENGINES:
            raise MedclfError(f"--engine: unknown '{engine}' (valid: {', '.join(ENGINES)})")
        tta = run.config.eval.tta_flip if tta_flip is None else bool(tta_flip)
        dev = pick_device(device) if device else device_of(run.model)
        predictor = cls(run.model, run.contract, tta_flip=tta, device=dev, image_size=run.image_size,
                        norm=run.norm, name=run.name)
        predictor.run = run
        if engine == "onnx":
            from medclf.runs.onnx import OnnxBackend

            predictor.backend = OnnxBackend.for_run(run, predictor.module, threads=threads, device=dev.type)
        elif engine == "onnx-int8":
            from medclf.runs.onnx import OnnxInt8Backend

            predictor.backend = OnnxInt8Backend.for_run(run, threads=threads)  # int8 kernels: CPU only
            predictor.contract = predictor.backend.contract
        return predictor

    # ------------------------------------------------------------------ what it predicts with
    @property
    def engine(self) -> str:
        return self.backend.name

    @property
    def tta_flip(self) -> bool:
        return self.module.tta_flip

    @property
    def task(self) -> Task:
        """What the contract's task means (medclf.tasks), read afresh: training stores thresholds after opening."""
        return task_for(self.contract)

    @property
    def threshold(self) -> float:
        return float(self.contract.threshold)

    @property
    def positive_label(self) -> str:
        return self.contract.label_names[self.contract.positive_index]

    @property
    def n_members(self) -> int:
        return len(self.module.members)

    @property
    def is_ensemble(self) -> bool:
        return is_ensemble(self.module.model)

    @property
    def has_ood(self) -> bool:
        return self.module.has_ood

    @property
    def ood_threshold(self) -> float | None:
        if not self.has_ood:
            return None
        return float(self.detectors[0]["threshold"]) if not self.is_ensemble else 1.0

    # ------------------------------------------------------------------ predicting
    def predict_arrays(self, images: np.ndarray | torch.Tensor, batch_size: int = 64) -> Prediction:
        """uint8 `B x S x S` (or one `S x S`) images as the cache holds them -> Prediction."""
        images = torch.as_tensor(np.ascontiguousarray(images) if isinstance(images, np.ndarray) else images)
        if images.dim() == 2:
            images = images.unsqueeze(0)
        if images.dtype != torch.uint8:
            raise MedclfError(f"predict_arrays: expected uint8 images, got {images.dtype}")
        return Prediction.concat([self.backend(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])

    def predict_dataset(self, dataset, batch_size: int = 64, progress: bool = False,
                        desc: str = "predict") -> Prediction:
        """Every image of a CacheDataset, in dataset order."""
        from medclf.data.dataset import make_loader

        loader = make_loader(dataset, batch_size=batch_size, pin_memory=self.device.type == "cuda")
        parts, order = [], []
        for images, _, positions in tqdm(loader, desc=desc, disable=not progress, leave=False):
            parts.append(self.backend(images))
            order.append(positions.numpy())
        if not parts:
            k = self.contract.num_classes
            return Prediction(np.zeros((0, k), np.float32), np.zeros((self.n_members, 0, k), np.float32))
        return _reorder(Prediction.concat(parts), np.concatenate(order))

    def predict_files(self, paths: Iterable[str | Path], batch_size: int = 32, progress: bool = False) -> pd.DataFrame:
        """A table, one row per file in order: `path`, then `columns(...)`, and `error` (why a file was not read)."""
        from medclf.data.imageio import load_image

        files = [Path(p) for p in paths]
        rows: list[dict] = []
        for start in tqdm(range(0, len(files), batch_size), desc="predict", disable=not progress, leave=False):
            chunk = files[start:start + batch_size]
            images, good, failed = read_images(chunk, lambda p: load_image(p, self.image_size, norm=self.norm))
            found = self.columns(self.predict_arrays(images)) if good else pd.DataFrame()
            by_path = {str(p): {**found.iloc[i].to_dict(), "error": ""} for i, p in enumerate(good)}
            by_path.update({str(p): {"error": reason} for p, reason in failed})
            rows.extend({"path": str(p), **by_path[str(p)]} for p in chunk)
        return pd.DataFrame(rows, columns=["path", *self.column_names(), "error"])

    # ------------------------------------------------------------------ reading a Prediction
    def column_names(self) -> list[str]:
        task = self.task
        names = task.lead_column_names() + (["std"] if self.is_ensemble else []) + task.class_column_names()
        names += ["ood", "ood_score"] if self.has_ood else []
        return names + (REFER_COLUMNS if self.contract.conformal else [])  # the refer band (Task.refer_columns)

    def columns(self, p: Prediction) -> pd.DataFrame:
        """The per-image columns shared by `predict`'s CSV and `evaluate`'s predictions table.

        Multilabel: `prob_<label>` and `pred_<label>` (0/1 at the label's threshold) per label, `predicted` the
        labels called. Otherwise `prob`: the positive class's probability; `predicted`: the class called at
        `threshold`. `std`: the members' disagreement (`spread`); `ood`, `ood_score`: see above.
        """
        task = self.task
        out = task.lead_columns(p.probs)
        if self.is_ensemble:
            out["std"] = task.spread(p.member_probs)
        out.update(task.class_columns(p.probs))
        if self.has_ood:
            score, flag = self.ood(p)
            out.update(ood=flag, ood_score=score)
        if self.contract.conformal:
            out.update(task.refer_columns(p.probs, self.contract.conformal))
        return pd.DataFrame(out)[self.column_names()]

    def decisions(self, probs: np.ndarray) -> list[str]:
        """The class called for each row of `probs` at the operating threshold; multilabel: the labels called,
        each at its own threshold, joined by `|` (`No Finding` when none is)."""
        return self.task.decisions(probs)

    def spread(self, p: Prediction) -> np.ndarray:
        """Members' disagreement per image: population std (ddof=0) of their positive-class probabilities
        (multilabel: the largest such std over the labels)."""
        return self.task.spread(p.member_probs)

    def ood(self, p: Prediction) -> tuple[np.ndarray, np.ndarray]:
        """(score, flag) per image; raises when the run has no detector."""
        if p.ood_scores is None:
            raise MedclfError(f"{self.name}: no out-of-distribution detector in this run (retrain, or run "
                              "`medclf ood RUN --ood CACHE` to fit one)")
        if not self.is_ensemble:
            score = p.ood_scores[:, 0].astype(np.float64)
        else:
            thresholds = np.array([float(d["threshold"]) for d in self.detectors])
            score = np.median(p.ood_scores / thresholds, axis=1)
        return score, score > self.ood_threshold

    # ------------------------------------------------------------------ the model side, for workflows
    @torch.no_grad()
    def embeddings(self, images: torch.Tensor) -> list[np.ndarray]:
        """Each member's penultimate features for uint8 images (eager), to fit OOD detectors on."""
        self.module.eval()
        feats = self.module.embeddings(torch.as_tensor(images).to(self.device))
        return [f.float().cpu().numpy() for f in feats]

    def predict_unit(self, x_unit: torch.Tensor) -> np.ndarray:
        """Probabilities `B x K` of unit-range `B x 1 x H x W` inputs (e.g. adversarial images), eager."""
        with torch.no_grad():
            return self.module.from_unit(x_unit.to(self.device))[0].float().cpu().numpy()

    def unit(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images -> the unit-range model-size input that `predict_unit` and attacks take."""
        return self.module.transform.unit(torch.as_tensor(images).to(self.device))


class Probabilities(torch.nn.Module):
    """unit-range input -> the Predictor's probabilities `B x K` (ensemble combination, flip TTA and the task's
    activation included): the model a perturbation metric such as ROAD reads class probabilities from."""

    def __init__(self, predictor: Predictor) -> None:
        super().__init__()
        self.inference = predictor.module

    def forward(self, x_unit: torch.Tensor) -> torch.Tensor:
        with autocast(x_unit.device, enabled=True):  # as the eager backend predicts
            return self.inference.from_unit(x_unit)[0].float()


class LogProbs(torch.nn.Module):
    """unit-range input -> log of the Predictor's probabilities: the model an attack differentiates."""

    def __init__(self, predictor: Predictor) -> None:
        super().__init__()
        self.inference = predictor.module

    def forward(self, x_unit: torch.Tensor) -> torch.Tensor:
        return self.inference.log_probs(x_unit)


def decide(probs: np.ndarray, positive_index: int, threshold: float, label_names: Sequence[str]) -> str:
    """Positive class when its probability reaches the operating threshold; otherwise the likeliest other class
    (a single-label Task's `decisions`, for one row)."""
    return make_task(None, label_names, positive_index, threshold).decisions(np.asarray(probs)[None])[0]


def read_images(files: list[Path], load) -> tuple[np.ndarray | None, list[Path], list[tuple[Path, str]]]:
    """Decode files with `load(path)`: (uint8 batch or None, readable paths, (path, reason) failures)."""
    images, good, failed = [], [], []
    for path in files:
        try:
            images.append(load(path))
            good.append(path)
        except MedclfError as err:
            failed.append((path, str(err)))
    return (np.stack(images) if images else None), good, failed


def _reorder(p: Prediction, positions: np.ndarray) -> Prediction:
    order = np.argsort(positions, kind="stable")
    return Prediction(p.probs[order], p.member_probs[:, order], None if p.ood_scores is None else p.ood_scores[order])


def device_of(model: torch.nn.Module) -> torch.device:
    """The device a model's parameters are on (CPU for a model without any)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
