"""`medclf export`: a run (one model or an ensemble) as ONNX or TorchScript, checked against eager PyTorch.

The exported graph is the run's whole inference, the Predictor's `InferenceModule` (see medclf.runs.onnx for the
inputs and outputs): uint8 `B x S x S` images as the cache holds them in; probabilities with the ensemble
combination and the flip test-time augmentation that chose the threshold, member probabilities and (when the
run has detectors) OOD scores out. The run's data contract travels with the file (ONNX
`metadata_props["medclf.contract"]`; TorchScript extra file `medclf.json`), plus `medclf.image_size` and
`medclf.norm` (how files are decoded: `load_image(path, size, norm)`) and `medclf.source` (a fingerprint of
the checkpoints, so `predict --engine onnx` can tell a current RUN/model.onnx from a stale one).

Parity: eager and exported outputs are compared on sample images — images of the run's cache when it is still
there, else seeded random images — at batch 1 and batch N; the max absolute difference is reported.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from medclf.errors import MedclfError
from medclf.io import atomic_path
from medclf.outdirs import check_output_file
from medclf.runs import Prediction, Predictor, Run, open_run
from medclf.runs.onnx import INPUT_NAME, OnnxBackend, _quiet, export_metadata, export_onnx, onnx_session

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}


@dataclass
class ExportResult:
    path: Path
    format: str
    max_abs_diff: float  # max |eager - exported| over the parity inputs, probabilities
    n_inputs: int
    image_size: int
    seconds: float  # export + parity check

    def summary(self) -> str:
        name = f" '{INPUT_NAME}'" if self.format == "onnx" else ""
        return (f"{self.format}: {self.path} (input{name} uint8 B x {self.image_size} x {self.image_size} images, "
                f"output B x K probabilities, B dynamic); parity on {self.n_inputs} images at batch 1 and "
                f"{self.n_inputs}: max |prob difference| = {self.max_abs_diff:.2e}; {self.seconds:.1f} s")


def export_run(run_dir: str | Path, format: str = "onnx", out: str | Path | None = None, n_check: int = 8,
               tolerance: float = 1e-3, progress: bool = False, force: bool = False) -> ExportResult:
    """Export `RUN` (default file `RUN/model.onnx` or `RUN/model.torchscript.pt`) and check parity. An `out`
    that exists is replaced only with `force` (`medclf.outdirs.check_output_file`).

    Raises MedclfError for an unknown format, or when parity exceeds `tolerance` (the file is kept for a look).
    """
    from tqdm import tqdm

    if format not in FORMATS:
        raise MedclfError(f"--format: unknown '{format}' (valid: {', '.join(FORMATS)})")
    if out is not None:
        check_output_file(out, force)  # before any work: the user's file is never replaced by surprise
    start = time.perf_counter()
    bar = tqdm(total=3, desc="load run", disable=not progress, leave=False)
    run = open_run(run_dir, "cpu")  # exported on the CPU in float32: the graph does not depend on the device
    predictor = run.predictor()
    out = Path(out) if out is not None else run.dir.export_path(SUFFIXES[format])
    images = parity_images(run, n_check)
    meta = export_metadata(run, predictor.module)
    bar.update()
    bar.set_description(f"export {format}")
    if format == "onnx":
        export_onnx(predictor.module, run.image_size, out, meta)
        exported = OnnxBackend(onnx_session(out))
    else:
        export_torchscript(predictor, out, meta)
        exported = torchscript_backend(load_torchscript(out))
    bar.update()
    bar.set_description("parity check")
    diff = parity(predictor, exported, images)
    bar.update()
    bar.close()
    result = ExportResult(out, format, diff, len(images), run.image_size, time.perf_counter() - start)
    if not diff <= tolerance:
        raise MedclfError(f"{out}: exported probabilities differ from eager PyTorch by {diff:.2e} "
                          f"(> {tolerance:g}); the file is kept for inspection")
    return result


def export_torchscript(predictor: Predictor, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """TorchScript by tracing (shapes are the only 'control flow' of these models), written atomically.

    `torch.jit` is deprecated upstream in favour of torch.export; it is offered for runtimes that still load
    TorchScript (LibTorch C++, older serving stacks). ONNX is the recommended format.
    """
    example = torch.zeros(2, predictor.image_size, predictor.image_size, dtype=torch.uint8)
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(predictor.module.cpu().eval(), example, check_trace=False)
        with atomic_path(path) as tmp:
            torch.jit.save(traced, str(tmp), _extra_files={"medclf.json": json.dumps(metadata or {})})
    return Path(path)


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    with _quiet():
        return torch.jit.load(str(path), map_location="cpu").eval()


def torchscript_backend(module: torch.jit.ScriptModule) -> Callable[[np.ndarray], Prediction]:
    def run(images: np.ndarray) -> Prediction:
        with torch.no_grad():
            out = [o.numpy() for o in module(torch.as_tensor(images))]
        return Prediction(out[0], out[1], out[2] if len(out) > 2 else None)

    return run


def parity_images(run: Run, n: int = 8, seed: int = 0) -> np.ndarray:
    """`n` uint8 images: the first of the run's cache (test split first) when it still exists, else seeded
    uniform noise."""
    images = _cache_images(run, n)
    if images is None:
        rng = np.random.default_rng(seed)
        images = rng.integers(0, 256, size=(n, run.image_size, run.image_size), dtype=np.uint8)
    return np.ascontiguousarray(images)


def parity(predictor: Predictor, exported: Callable[[np.ndarray], Prediction], images: np.ndarray) -> float:
    """Max |eager - exported| probability over `images` run at batch 1 (first image) and as one batch."""
    eager = predictor.predict_arrays(images).probs
    single = np.abs(exported(images[:1]).probs - eager[:1]).max()
    full = np.abs(exported(images).probs - eager).max()
    return float(max(single, full))


def _cache_images(run: Run, n: int) -> np.ndarray | None:
    from medclf.data.cache import Cache

    with contextlib.suppress(Exception):  # the cache may be gone or moved; parity then uses noise
        path = run.dir.cache_path()
        if path is not None and path.is_dir():
            cache = Cache.open(path)
            if cache.size == run.image_size and len(cache.manifest):
                test = cache.indices("test")
                rest = np.setdiff1d(np.arange(len(cache.manifest)), test)
                rows = np.sort(np.concatenate([test, rest])[:n])
                return np.asarray(cache.images[rows])
    return None
