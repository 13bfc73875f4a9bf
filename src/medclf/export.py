"""Export a run (one model or an ensemble) to ONNX or TorchScript, checked against eager PyTorch.

The exported graph is the model *with its softmax*:

    input  "input": float32  B x C x H x W, the image normalised by the run's contract (mean/std, C = in_chans,
                    H = W = input_size) — what `make_transform(contract, train=False)` produces; B is dynamic.
    output "probs": float32  B x K class probabilities (rows sum to 1); `probs[:, positive_index]` is the
                    predictions table's `prob`. Ensembles export their combined probabilities.

Decoding (DICOM/PNG/JPEG -> uint8 S x S, `medclf.data.imageio.load_image`) and resize/normalise stay outside the
graph: they are the same code for every engine, so an exported model sees exactly the pixels eager PyTorch sees.
The run's data contract travels with the file (ONNX `metadata_props["medclf.contract"]`; TorchScript extra file
`medclf.json`), plus `medclf.image_size` and `medclf.norm` (how images are decoded: `load_image(path, size,
norm)`) and `medclf.source` (a fingerprint of the checkpoints, so `predict --engine onnx` can tell a current
RUN/model.onnx from a stale one).

Parity: eager and exported probabilities are compared on sample inputs — images of the run's cache when it is
still there, else seeded random images — at batch 1 and batch N; the max absolute difference is reported.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from medclf.errors import MedclfError
from medclf.io import atomic_path
from medclf.runs import LoadedRun, load_run, run_cache_path

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
INPUT_NAME, OUTPUT_NAME = "input", "probs"
ORT_LEVELS = ("disable", "basic", "extended", "all")
log = logging.getLogger("medclf.export")


class ProbabilityModel(nn.Module):
    """`softmax(model(x))` in float32: what `predict_probs` computes, as one module to export.

    An Ensemble's forward returns the log of its combined probabilities, so the same softmax gives them back.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x).float(), dim=1)


@dataclass
class ExportResult:
    path: Path
    format: str
    max_abs_diff: float  # max |eager - exported| over the parity inputs, probabilities
    n_inputs: int
    input_shape: tuple[int, ...]  # B x C x H x W of the parity batch (B is dynamic)
    seconds: float  # export + parity check

    def summary(self) -> str:
        c, h, w = self.input_shape[1:]
        names = (f" '{INPUT_NAME}'", f" '{OUTPUT_NAME}'") if self.format == "onnx" else ("", "")
        return (f"{self.format}: {self.path} (input{names[0]} B x {c} x {h} x {w} normalised float32, output"
                f"{names[1]} B x K probabilities, B dynamic); parity on {self.n_inputs} images at batch 1 and "
                f"{self.n_inputs}: max |prob difference| = {self.max_abs_diff:.2e}; {self.seconds:.1f} s")


def export_run(run_dir: str | Path, format: str = "onnx", out: str | Path | None = None, n_check: int = 8,
               tolerance: float = 1e-3, progress: bool = False) -> ExportResult:
    """Export `RUN` (default file `RUN/model.onnx` or `RUN/model.torchscript.pt`) and check parity.

    Raises MedclfError for an unknown format, or when parity exceeds `tolerance` (the file is kept for a look).
    """
    from tqdm import tqdm

    if format not in FORMATS:
        raise MedclfError(f"--format: unknown '{format}' (valid: {', '.join(FORMATS)})")
    start = time.perf_counter()
    bar = tqdm(total=3, desc="load run", disable=not progress, leave=False)
    run = load_run(run_dir, "cpu")  # exported on the CPU in float32: the graph does not depend on the device
    out = Path(out) if out is not None else Path(run_dir) / f"model{SUFFIXES[format]}"
    inputs = parity_inputs(run, n_check)
    module = ProbabilityModel(run.model).eval()
    meta = export_metadata(run)
    example = torch.cat([inputs, inputs])[:2]  # batch 2: a batch-1 example would pin the batch axis to 1
    bar.update()
    bar.set_description(f"export {format}")
    if format == "onnx":
        export_onnx(module, example, out, meta)
        exported = onnx_probs_fn(onnx_session(out))
    else:
        export_torchscript(module, example, out, meta)
        exported = torchscript_probs_fn(load_torchscript(out))
    bar.update()
    bar.set_description("parity check")
    diff = parity(module, exported, inputs)
    bar.update()
    bar.close()
    result = ExportResult(out, format, diff, len(inputs), tuple(inputs.shape), time.perf_counter() - start)
    if not diff <= tolerance:
        raise MedclfError(f"{out}: exported probabilities differ from eager PyTorch by {diff:.2e} "
                          f"(> {tolerance:g}); the file is kept for inspection")
    return result


# ---------------------------------------------------------------- writing


def export_onnx(module: nn.Module, example: torch.Tensor, path: str | Path, metadata: dict[str, str] | None = None,
                opset: int | None = None) -> Path:
    """ONNX with a dynamic batch axis, written atomically; `torch.export`-based exporter (torch's default)."""
    onnx = _require("onnx", "onnxscript")[0]
    batch = torch.export.Dim("batch", min=1, max=65536)
    try:
        with _quiet():
            program = torch.onnx.export(module, (example,), None, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], dynamic_shapes={"x": {0: batch}},
                                        opset_version=opset, dynamo=True, verbose=False)
    except Exception as err:  # an op torch.export cannot capture: the TorchScript-based exporter may still manage
        log.warning("torch.export-based ONNX export failed (%s); using the TorchScript-based exporter",
                    str(err).splitlines()[0] if str(err) else type(err).__name__)
        return _export_onnx_legacy(onnx, module, example, path, metadata or {}, opset)
    program.model.metadata_props.update(metadata or {})
    with atomic_path(path) as tmp:
        program.save(tmp, external_data=False)  # one self-contained file (models < 2 GB)
    return Path(path)


def _export_onnx_legacy(onnx, module: nn.Module, example: torch.Tensor, path: str | Path, metadata: dict[str, str],
                        opset: int | None) -> Path:
    with atomic_path(path) as tmp, _quiet():
        torch.onnx.export(module, (example,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          opset_version=opset or 17, dynamo=False)
        model = onnx.load(str(tmp))
        for key, value in metadata.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(model, str(tmp))
    return Path(path)


def export_torchscript(module: nn.Module, example: torch.Tensor, path: str | Path,
                       metadata: dict[str, str] | None = None) -> Path:
    """TorchScript by tracing (shapes are the only 'control flow' of these models), written atomically.

    `torch.jit` is deprecated upstream in favour of torch.export; it is offered for runtimes that still load
    TorchScript (LibTorch C++, older serving stacks). ONNX is the recommended format.
    """
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(module, example, check_trace=False)
        with atomic_path(path) as tmp:
            torch.jit.save(traced, str(tmp), _extra_files={"medclf.json": json.dumps(metadata or {})})
    return Path(path)


def export_metadata(run: LoadedRun) -> dict[str, str]:
    return {
        "medclf.contract": json.dumps(run.contract.to_dict()),
        "medclf.image_size": str(run.image_size),
        "medclf.norm": str(getattr(run, "norm", "robust")),  # grey-level normalisation of the decode (load_image)
        "medclf.source": source_fingerprint(run.run_dir),
        "medclf.input": f"{INPUT_NAME}: float32 B x C x H x W normalised by the contract's mean/std",
        "medclf.output": f"{OUTPUT_NAME}: float32 B x K softmax probabilities",
    }


def source_fingerprint(run_dir: str | Path) -> str:
    """sha256 over the run's checkpoints and ensemble description (relative path, size, mtime).

    Cheap (no hashing of weights), and enough to notice a retrained or re-finalised run.
    """
    run_dir = Path(run_dir)
    files = sorted(list(run_dir.rglob("best.pt")) + list(run_dir.glob("ensemble.json")))
    listing = [(str(p.relative_to(run_dir)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


# ---------------------------------------------------------------- reading and running


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
    options.intra_op_num_threads = threads or _usable_cores()
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


def onnx_probs_fn(session) -> Callable[[torch.Tensor], np.ndarray]:
    """`x` (normalised, any device) -> probabilities `B x K` via ONNX Runtime."""

    def run(x: torch.Tensor) -> np.ndarray:
        feed = np.ascontiguousarray(x.detach().float().cpu().numpy())
        return session.run([OUTPUT_NAME], {INPUT_NAME: feed})[0]

    return run


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    with _quiet():
        return torch.jit.load(str(path), map_location="cpu").eval()


def torchscript_probs_fn(module: torch.jit.ScriptModule) -> Callable[[torch.Tensor], np.ndarray]:
    def run(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return module(x.float().cpu()).numpy()

    return run


def onnx_session_for_run(run: LoadedRun, threads: int | None = None, device: str = "cpu",
                         work_dir: str | Path | None = None):
    """A session on `RUN/model.onnx` when it was exported from the run's current checkpoints; else on a fresh
    export into `work_dir`, or into a temp dir that is deleted once the session has loaded the model
    (predicting never writes into the run directory)."""
    current = run.run_dir / "model.onnx"
    if current.is_file():
        with contextlib.suppress(MedclfError):
            session = onnx_session(current, threads=threads, device=device)
            if onnx_metadata(session).get("medclf.source") == source_fingerprint(run.run_dir):
                return session
    with contextlib.ExitStack() as stack:
        folder = work_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="medclf-onnx-"))
        out = Path(folder) / "model.onnx"
        model = copy.deepcopy(run.model).cpu() if _device_of(run.model).type != "cpu" else run.model
        example = torch.zeros(2, run.contract.in_chans, run.contract.input_size, run.contract.input_size)
        export_onnx(ProbabilityModel(model).eval(), example, out, export_metadata(run))
        return onnx_session(out, threads=threads, device=device)


# ---------------------------------------------------------------- parity


def parity_inputs(run: LoadedRun, n: int = 8, seed: int = 0) -> torch.Tensor:
    """`n` normalised inputs: the first images of the run's cache (test split first) when it still exists, else
    seeded uniform uint8 noise; both through the run's eval transform, as predict does."""
    from medclf.data.transforms import make_transform

    images = _cache_images(run, n)
    if images is None:
        rng = np.random.default_rng(seed)
        images = rng.integers(0, 256, size=(n, run.image_size, run.image_size), dtype=np.uint8)
    return make_transform(run.contract, train=False)(torch.from_numpy(np.ascontiguousarray(images)))


def parity(module: nn.Module, exported: Callable[[torch.Tensor], np.ndarray], inputs: torch.Tensor) -> float:
    """Max |eager - exported| over `inputs` run at batch 1 (first input) and as one batch."""
    with torch.no_grad():
        eager = module(inputs).numpy()
    single = np.abs(exported(inputs[:1]) - eager[:1]).max()
    full = np.abs(exported(inputs) - eager).max()
    return float(max(single, full))


def _cache_images(run: LoadedRun, n: int) -> np.ndarray | None:
    from medclf.data.cache import Cache

    with contextlib.suppress(Exception):  # the cache may be gone or moved; parity then uses noise
        path = run_cache_path(run.run_dir)
        if path is not None and path.is_dir():
            cache = Cache.open(path)
            if cache.size == run.image_size and len(cache.manifest):
                test = cache.indices("test")
                rest = np.setdiff1d(np.arange(len(cache.manifest)), test)
                rows = np.sort(np.concatenate([test, rest])[:n])
                return np.asarray(cache.images[rows])
    return None


# ---------------------------------------------------------------- helpers


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


def _usable_cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
