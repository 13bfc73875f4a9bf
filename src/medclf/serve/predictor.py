"""The model behind the service: decode uploads exactly as `medclf predict` does, run the model, add the
heatmap and the OOD score, and shape the JSON answer.

Concurrency: uvicorn runs one worker process and the app calls `ServeModel.predict` from worker threads, at
most `max_concurrent` at a time (`create_app`), where decoding and PNG encoding run in parallel. Everything
that touches the shared model (forward pass, Grad-CAM's hooks and gradients, the OOD embedding) is handed to
one dedicated thread (a single-worker executor), so model work is serialised, one request's batch at a
time: Grad-CAM mutates the model (hooks, `.grad`) and must not overlap. One thread rather than a lock,
because torch keeps per-calling-thread state (its OpenMP team, autograd and allocator caches): under a lock
with 8 concurrent clients the server's RSS grew by ~450 MiB (1.04 -> 1.50 GiB, resnet18 at 224 px); with the
single model thread it stays at ~1.05 GiB.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medclf.data.imageio import load_image, load_with_info
from medclf.device import pick_device
from medclf.errors import MedclfError
from medclf.explain.scores import is_flat
from medclf.explain.targets import map_targets
from medclf.models.ensemble import members_of
from medclf.runs import Prediction, Run, RunDir, open_run
from medclf.runs.refer import REFER_TEXT
from medclf.serve.adapters import HEATMAP_METHOD, heatmap_maps
from medclf.serve.render import heat_rgba, png_base64
from medclf.serve.uploads import Upload, UploadError

DISPLAY_MAX = 512  # side of the picture returned for display (never more than the file's own)
# The service's pixel limit per image, lower than the data layer's 64 Mpx (`medclf.data.limits`): it covers the
# largest chest detectors (43 x 43 cm at 0.1 mm, 4300 x 4300 = 18.5 Mpx) while an upload of a few hundred KB
# (an 8192 x 8192 deflated DICOM, a 13000 x 13000 PNG) is refused from its header, or while its deflated data
# set is counted (5 bytes per pixel + 1 MiB: 121 MiB < the 128 MiB of 8192^2 16-bit pixels), before decoding.
DEFAULT_MAX_MPX = 24.0
# The only DICOM header fields an answer may carry: none of them identifies a patient.
SAFE_DICOM_FIELDS = ("modality", "view", "photometric", "bits_stored")
SUMMARY_KEYS = ("source", "size", "label_names", "positive_index", "split_counts", "view_counts")


@dataclass
class Decoded:
    upload: Upload
    image: np.ndarray  # uint8 S x S, exactly what the model gets (the training cache's pipeline)
    display: np.ndarray  # uint8, the same picture at display size
    dicom: dict[str, Any] | None


class ServeModel:
    """One loaded run (single model or ensemble) shared by all requests; its Predictor gives the numbers."""

    def __init__(self, run: Run, device: torch.device, max_mpx: float = DEFAULT_MAX_MPX, engine: str = "torch") -> None:
        self.run = run
        self.device = device
        self.max_mpx = max_mpx
        self.max_pixels = int(max_mpx * 2**20)
        self.predictor = run.predictor(engine=engine)
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medclf-model")

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "auto", max_mpx: float = DEFAULT_MAX_MPX,
             engine: str = "torch") -> ServeModel:
        """Open `run_dir` with `medclf.runs.open_run` (checkpoints are read with `weights_only=True`); images
        of more than `max_mpx` megapixels (2**20 pixels) are refused before decoding. `engine`: the
        Predictor's (torch, onnx, onnx-int8)."""
        dev = pick_device(device)
        return cls(open_run(run_dir, dev), dev, max_mpx, engine)

    def info(self) -> dict[str, Any]:
        """What `/api/model` shows: the model's contract and counts of its training data (no patient data)."""
        c = self.predictor.contract  # the engine's threshold (onnx-int8 has its own)
        members = members_of(self.run.model)
        return {
            "name": self.run.name,
            "model_name": c.model_name,
            "kind": "ensemble" if self.run.is_ensemble else "single",
            "members": len(members),
            "labels": list(c.label_names),
            "positive_label": c.label_names[c.positive_index],
            "positive_index": c.positive_index,
            "input_size": c.input_size,
            "image_size": self.run.image_size,
            "threshold": c.threshold,
            "engine": self.predictor.engine,
            # why the threshold is what it is, and why the figures behind it may mean nothing (None / [] for
            # runs trained before medclf recorded them); the page shows the warnings beside the model
            "threshold_source": c.threshold_source,
            "threshold_reason": c.threshold_reason,
            "warnings": list(c.threshold_warnings),
            "ood": self.predictor.has_ood,
            "conformal": c.conformal,
            "tta_flip": self.predictor.tta_flip,
            "heatmap_method": HEATMAP_METHOD,
            "max_mpx": self.max_mpx,
            "training_data": training_summary(self.run.run_dir),
        }

    def predict(self, uploads: list[Upload], heatmap: bool = True, image: bool = True) -> list[dict[str, Any]]:
        """One result per upload, in order. Raises `UploadError(400)` naming the file that cannot be decoded."""
        decoded = [self.decode(u, image) for u in uploads]
        batch = np.stack([d.image for d in decoded])
        prediction, (maps, map_reason) = self._model_thread.submit(self._run_model, batch, heatmap).result()
        columns = self.predictor.columns(prediction).to_dict("records")
        ood, ood_reason = self._ood(columns)
        return [self._result(d, prediction.probs[i], columns[i], None if maps is None else maps[i], map_reason,
                             None if ood is None else ood[i], ood_reason, image) for i, d in enumerate(decoded)]

    def _run_model(self, batch: np.ndarray, heatmap: bool) -> tuple[Prediction, tuple]:
        """Runs on the model thread only: the Predictor's outputs and (maps, reason)."""
        prediction = self.predictor.predict_arrays(batch)
        # the class `explain` draws too (explain.targets.map_targets: the task's default)
        targets = map_targets(self.predictor.task, prediction.probs)
        maps = heatmap_maps(self.run, batch, self.device, targets) if heatmap else (None, "not requested")
        return prediction, maps

    def _ood(self, columns: list[dict]) -> tuple[list[dict] | None, str | None]:
        """Per image `{"score", "flag"}` from the run's detector, or (None, why there is none)."""
        if not self.predictor.has_ood:
            return None, "this run has no out-of-distribution detector (contract.ood is not set; retrain or run " \
                         "`medclf ood RUN --ood CACHE`)"
        return [{"score": float(c["ood_score"]), "flag": bool(c["ood"])} for c in columns], None

    def decode(self, upload: Upload, want_display: bool = True) -> Decoded:
        """The upload as the uint8 square the model takes (same code path as the training cache)."""
        size = self.run.image_size
        try:
            loaded = load_with_info(upload.path, size, norm=self.run.norm, max_pixels=self.max_pixels)
            display = loaded.image
            side = max(loaded.original_shape)
            target = max(size, min(DISPLAY_MAX, side))
            if want_display and target != size:
                display = load_image(upload.path, target, norm=self.run.norm, max_pixels=self.max_pixels)
        except UploadError:
            raise
        except Exception as err:  # DataError from our readers, and anything odder a hostile file provokes
            raise UploadError(400, f"{upload.filename}: {public_reason(err, upload.path)}") from None
        dicom = {k: loaded.header.get(k) for k in SAFE_DICOM_FIELDS} if upload.kind == "dicom" else None
        return Decoded(upload=upload, image=loaded.image, display=display, dicom=dicom)

    def _result(self, d: Decoded, probs: np.ndarray, columns: dict, cam: np.ndarray | None, cam_reason: str | None,
                ood: dict | None, ood_reason: str | None, image: bool) -> dict[str, Any]:
        c = self.predictor.contract  # the engine's threshold (onnx-int8 has its own)
        # the bar: the positive class (multilabel: the likeliest label, with `called` and `thresholds`)
        fields = self.predictor.task.serve_fields(probs, columns)
        return {
            "filename": d.upload.filename,
            "type": d.upload.kind,
            "model": c.model_name,
            "probability": fields.pop("probability"),
            "probabilities": {name: float(p) for name, p in zip(c.label_names, probs)},
            "label": columns["predicted"],
            **fields,
            "ood": ood,
            "ood_reason": ood_reason,
            "refer": refer_result(columns, c.conformal),
            "heatmap": None if cam is None else png_base64(heat_rgba(cam, d.display.shape[0])),
            "heatmap_method": HEATMAP_METHOD,
            "heatmap_flat": None if cam is None else is_flat(cam),  # no region stands out
            "heatmap_reason": cam_reason,
            "image": png_base64(d.display) if image else None,
            "image_size": int(d.display.shape[0]),
            "dicom": d.dicom,
        }


def refer_result(columns: dict, band: dict | None) -> dict[str, Any] | None:
    """The refer band for one image: `flag` ("uncertain — refer" when the set is not one class), the `set` of
    plausible classes (multilabel: the uncertain labels), `text`, and the band's alpha; None without a band."""
    if not band:
        return None
    flag = bool(columns["refer"])
    return {"flag": flag, "set": columns["prediction_set"], "alpha": band["alpha"],
            "text": REFER_TEXT if flag else "confident: one plausible class"}


def training_summary(run_dir: Path) -> dict[str, Any] | None:
    """Counts from `data_summary.json` (split x label, split x view); the cache's path is left out."""
    summary = RunDir(run_dir).data_summary()
    if summary is None:
        return None
    out = {k: summary[k] for k in SUMMARY_KEYS if k in summary}
    counts = summary.get("split_counts") or {}
    sizes = summary.get("split_sizes")  # a multi-label image counts under each of its labels in split_counts
    out["n"] = int(sum(sizes.values())) if sizes else int(sum(sum(v.values()) for v in counts.values()))
    return out


def public_reason(err: BaseException, path: Path) -> str:
    """Why a file was refused, as the client is told: the reader's message without the server's temporary
    path and without any value read from the file.

    Header values can hold any text (a fuzzer put words in RescaleSlope), and readers quote them, in quotes
    or in brackets with the decoder's own message; so the reason stops before the first quote or bracket
    ("invalid RescaleSlope"). A size refusal keeps its bracket: our numbers only (pixels and the limit).
    """
    if not isinstance(err, MedclfError):
        return "cannot decode image"
    text = " ".join(str(err).split())
    for server_side in (f"{path}: ", str(path), f"{path.name}: ", path.name):
        text = text.replace(server_side, "")
    if text.startswith("image too large ("):
        return text
    return re.split(r"\s*[(\[{'\"]", text, maxsplit=1)[0].strip() or "cannot decode image"
