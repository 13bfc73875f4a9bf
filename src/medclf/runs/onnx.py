"""The ONNX Runtime backend of the Predictor: `InferenceModule` exported to ONNX and run by ONNX Runtime.

The graph is the whole inference (medclf.runs.graph): uint8 images as the cache holds them in, resize,
normalisation, the model(s), softmax, ensemble combination, flip test-time augmentation and the OOD score
out. Decoding files (DICOM/PNG/JPEG -> uint8 S x S, `medclf.data.imageio.load_image`) stays outside: it is the
same code for both engines. Inputs and outputs:

    input  "images":       uint8    B x S x S (S = the run's cache size, `medclf.image_size`); B is dynamic
    output "probs":        float32  B x K class probabilities (rows sum to 1)
    output "member_probs": float32  M x B x K each member's probabilities (M = 1 for one model)
    output "ood":          float32  B x M Mahalanobis scores (only when the run has OOD detectors)
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from medclf.errors import MedclfError
from medclf.evaluation.ood import describe_detector
from medclf.runs.graph import InferenceModule
from medclf.runs.predictor import Prediction

INPUT_NAME = "images"
OUTPUT_NAMES = ("probs", "member_probs", "ood")
ORT_LEVELS = ("disable", "basic", "extended", "all")
log = logging.getLogger("medclf.export")


class OnnxBackend:
    """An ONNX Runtime session on the exported InferenceModule; same call as the eager backend."""

    name = "onnx"

    def __init__(self, session) -> None:
        self.session = session
        self.outputs = [o.name for o in session.get_outputs()]

    @classmethod
    def for_run(cls, run, module: InferenceModule, threads: int | None = None, device: str = "cpu") -> OnnxBackend:
        return cls(session_for_run(run, module, threads=threads, device=device))

    def __call__(self, images: torch.Tensor | np.ndarray) -> Prediction:
        feed = np.ascontiguousarray(np.asarray(images, dtype=np.uint8))
        out = dict(zip(self.outputs, self.session.run(self.outputs, {INPUT_NAME: feed})))
        return Prediction(out["probs"], out["member_probs"], out.get("ood"))


class OnnxInt8Backend(OnnxBackend):
    """`RUN/model.int8.onnx` (`medclf export RUN --format onnx --int8`) on ONNX Runtime; same call as the others.

    Its `contract` is the run's with the operating threshold(s) chosen on the int8 probabilities (stored in the
    file's `medclf.contract`), so every decision is made at a threshold chosen on the probabilities it meets."""

    name = "onnx-int8"

    def __init__(self, session) -> None:
        super().__init__(session)
        from medclf.contract import DataContract

        self.contract = DataContract.from_dict(json.loads(onnx_metadata(session)["medclf.contract"]))

    @classmethod
    def for_run(cls, run, module: InferenceModule | None = None, threads: int | None = None,
                device: str = "cpu") -> OnnxInt8Backend:
        """The run's int8 file; a missing one, or one exported from other checkpoints or settings, is an error
        (quantising needs calibration images and an accuracy check, so it never happens on the fly)."""
        path = run.dir.int8_path
        how = f"run `medclf export {run.dir.path} --format onnx --int8`"
        if not path.is_file():
            raise MedclfError(f"{path}: no int8 model in this run; {how}")
        session = onnx_session(path, threads=threads, device=device)
        if onnx_metadata(session).get("medclf.source") != source_fingerprint(run):
            raise MedclfError(f"{path}: exported from other checkpoints or settings than the run has now; {how}")
        return cls(session)


def export_onnx(module: InferenceModule, image_size: int, path: str | Path, metadata: dict[str, str] | None = None,
                opset: int | None = None) -> Path:
    """The module as ONNX with a dynamic batch axis, written atomically (torch.export-based exporter)."""
    from medclf.io import atomic_path

    _require("onnx", "onnxscript")
    example = torch.zeros(2, image_size, image_size, dtype=torch.uint8)  # batch 2: batch 1 would pin the axis
    names = list(OUTPUT_NAMES[:3 if module.has_ood else 2])
    module = module.eval()
    with _quiet():
        program = torch.onnx.export(module, (example,), None, input_names=[INPUT_NAME], output_names=names,
                                    dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1, max=65536)}},
                                    opset_version=opset, dynamo=True, verbose=False)
    program.model.metadata_props.update(metadata or {})
    with atomic_path(path) as tmp:
        program.save(tmp, external_data=False)  # one self-contained file (models < 2 GB)
    return Path(path)


def export_metadata(run, module: InferenceModule) -> dict[str, str]:
    """What travels with an exported file: the contract, how to decode images, and where it came from."""
    contract = {**run.contract.to_dict(), "ood": None}
    return {
        "medclf.contract": json.dumps(contract),
        "medclf.image_size": str(run.image_size),
        "medclf.norm": str(run.norm),  # grey-level normalisation of the decode (load_image)
        "medclf.tta_flip": json.dumps(module.tta_flip),
        "medclf.ood": json.dumps([describe_detector(c.ood) for c in run.member_contracts] if module.has_ood else None),
        "medclf.source": source_fingerprint(run),
        "medclf.input": f"{INPUT_NAME}: uint8 B x S x S images as the cache holds them (S = medclf.image_size)",
        "medclf.output": "probs: float32 B x K probabilities; member_probs: M x B x K; ood (if any): B x M",
    }


def source_fingerprint(run) -> str:
    """sha256 over the run's checkpoints and ensemble description (relative path, size, mtime), and the
    prediction settings: cheap (no hashing of weights), enough to notice a retrained or re-finalised run."""
    root = run.dir.path
    files = sorted(run.dir.checkpoints() + ([run.dir.ensemble_path] if run.dir.is_ensemble else []))
    listing = [(str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    listing.append(("tta_flip", bool(run.config.eval.tta_flip)))
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def onnx_session(path: str | Path, threads: int | None = None, opt_level: str = "all", device: str = "cpu",
                 spinning: bool = False):
    """An ONNX Runtime session; `threads` defaults to the cores this process may use (ORT's own default counts
    the host's cores, which oversubscribes a container). Idle pool threads do not spin by default: on a CPU
    shared with other busy processes spinning threads steal the cores the work needs (docs/performance.md has
    the measurement); `spinning=True` is ORT's own default, for a machine dedicated to serving."""
    ort = _require("onnxruntime")[0]
    if opt_level not in ORT_LEVELS:
        raise MedclfError(f"unknown ONNX Runtime optimisation level '{opt_level}' (valid: {', '.join(ORT_LEVELS)})")
    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[opt_level]
    options.intra_op_num_threads = threads or usable_cores()
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as err:  # onnxruntime raises its own exception types for unreadable models
        raise MedclfError(f"{path}: ONNX Runtime cannot load it ({str(err).splitlines()[0]})") from None


def onnx_metadata(session) -> dict[str, str]:
    return dict(session.get_modelmeta().custom_metadata_map)


def session_for_run(run, module: InferenceModule, threads: int | None = None, device: str = "cpu",
                    work_dir: str | Path | None = None):
    """A session on `RUN/model.onnx` when it was exported from the run's current checkpoints and settings; else
    on a fresh export into `work_dir`, or into a temp dir deleted once the session has loaded the model
    (predicting never writes into the run directory)."""
    current = run.dir.onnx_path
    if current.is_file():
        with contextlib.suppress(MedclfError):
            session = onnx_session(current, threads=threads, device=device)
            if onnx_metadata(session).get("medclf.source") == source_fingerprint(run):
                return session
    with contextlib.ExitStack() as stack:
        folder = work_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="medclf-onnx-"))
        out = Path(folder) / "model.onnx"
        export_onnx(cpu_copy(module), run.image_size, out, export_metadata(run, module))
        return onnx_session(out, threads=threads, device=device)


def cpu_copy(module: nn.Module) -> nn.Module:
    """The module itself when it is on the CPU, else a CPU copy (the graph does not depend on the device)."""
    param = next(module.parameters(), None)
    return copy.deepcopy(module).cpu() if param is not None and param.device.type != "cpu" else module


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters warn about tracing and deprecations we have accounted for; keep the user's output clean."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _require(*modules: str) -> list:
    import importlib

    loaded = []
    for name in modules:
        try:
            loaded.append(importlib.import_module(name))
        except ImportError:
            raise MedclfError(f"'{name}' is not installed; `pip install {name}` (needed for ONNX export and "
                              f"--engine onnx)") from None
    return loaded


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
