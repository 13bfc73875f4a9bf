"""`medclf predict`: files or folders of DICOM/PNG/JPEG -> probabilities at the run's operating threshold."""

from __future__ import annotations

import contextlib

from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from medclf.data.transforms import make_transform
from medclf.engine.device import pick_device
from medclf.engine.inference import predict_probs
from medclf.errors import MedclfError
from medclf.io import atomic_path
from medclf.runs import LoadedRun, load_run

from medclf.data.imageio import INPUT_SUFFIXES as IMAGE_SUFFIXES  # the list `prepare folder` accepts
ENGINES = ("torch", "onnx")
# normalised batch `B x C x H x W` -> probabilities `B x K`
ProbsFn = Callable[[torch.Tensor], np.ndarray]


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders searched recursively for image suffixes (sorted, so output order is stable)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files.extend(sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif item.exists():
            files.append(item)
        else:
            raise MedclfError(f"{item}: no such file or folder")
    if not files:
        raise MedclfError("no input images found (DICOM, PNG or JPEG files, or folders of them)")
    return files


def predict_files(
    run_dir: str | Path,
    inputs: Iterable[str | Path],
    out: str | Path | None = None,
    batch_size: int = 32,
    device: str = "auto",
    progress: bool = True,
    engine: str = "torch",
) -> pd.DataFrame:
    """Returns (and writes to `out`) a table `path,prob,label,error` — unreadable files keep their reason.

    `engine`: "torch" (eager PyTorch) or "onnx" (ONNX Runtime on RUN/model.onnx when it is current, else on a
    model exported on the fly into a temp dir; see medclf.export).
    """
    if engine not in ENGINES:
        raise MedclfError(f"--engine: unknown '{engine}' (valid: {', '.join(ENGINES)})")
    dev = pick_device(device)
    run = load_run(run_dir, dev)
    files = expand_inputs(inputs)
    probs_fn = make_probs_fn(run, engine, dev)
    rows = []
    for start in tqdm(range(0, len(files), batch_size), desc="predict", disable=not progress, leave=False):
        rows.extend(predict_batch(run, files[start:start + batch_size], dev, probs_fn))
    # runs with a stored OOD detector (`medclf ood`) also say whether each image looks like the training images
    columns = ["path", "prob", "label", "error"] + (["ood", "ood_score"] if run.contract.ood else [])
    table = pd.DataFrame(rows, columns=columns)
    if out is not None:
        with atomic_path(out) as tmp:
            table.to_csv(tmp, index=False)
    return table


def make_probs_fn(run: LoadedRun, engine: str, device: torch.device) -> ProbsFn | None:
    """None for eager PyTorch (predict_arrays' default); an ONNX Runtime session's function for "onnx"."""
    if engine != "onnx":
        return None
    from medclf.export import onnx_probs_fn, onnx_session_for_run

    return onnx_probs_fn(onnx_session_for_run(run, device=device.type))


def read_images(run: LoadedRun, files: list[Path]) -> tuple[np.ndarray | None, list[Path], list[tuple[Path, str]]]:
    """Decode files as the run's cache would hold them: (uint8 batch or None, readable paths, (path, reason) failures)."""
    images, good, failed = [], [], []
    for path in files:
        try:
            images.append(run.load_image(path))
            good.append(path)
        except MedclfError as err:
            failed.append((path, str(err)))
    return (np.stack(images) if images else None), good, failed


def predict_batch(run: LoadedRun, files: list[Path], device: torch.device,
                  probs_fn: ProbsFn | None = None) -> list[dict]:
    batch, good, failed = read_images(run, files)
    rows = [{"path": str(path), "prob": None, "label": None, "error": err} for path, err in failed]
    if batch is not None:
        probs = predict_arrays(run, batch, device, probs_fn)
        ood = _ood_columns(run, batch)
        names = run.contract.label_names
        for path, p, extra in zip(good, probs, ood):
            prob = float(p[run.contract.positive_index])
            label = decide(p, run.contract.positive_index, run.contract.threshold, names)
            rows.append({"path": str(path), "prob": prob, "label": label, "error": "", **extra})
    order = {str(p): i for i, p in enumerate(files)}
    return sorted(rows, key=lambda r: order[r["path"]])


def _ood_columns(run: LoadedRun, images: np.ndarray) -> list[dict]:
    """`ood` (True: not like the training images) and `ood_score` per image when the run has a detector."""
    if not run.contract.ood:
        return [{}] * len(images)
    from medclf.robust.ood import ood_flags

    scores, flags = ood_flags(run, images)
    return [{"ood": bool(f), "ood_score": float(s)} for s, f in zip(scores, flags)]


def predict_arrays(run: LoadedRun, images: np.ndarray, device: torch.device,
                   probs_fn: ProbsFn | None = None) -> np.ndarray:
    """uint8 `B x S x S` -> probabilities `B x K` (eager PyTorch unless `probs_fn` is given, e.g. ONNX Runtime)."""
    transform = make_transform(run.contract, train=False)
    if probs_fn is not None:
        with single_torch_thread(device):  # the resize is cheap; the cores belong to ONNX Runtime's threads
            x = transform(torch.from_numpy(images).to(device))
        return probs_fn(x)
    x = transform(torch.from_numpy(images).to(device))
    with torch.no_grad():
        return predict_probs(run.model, x, device)


@contextlib.contextmanager
def single_torch_thread(device: torch.device) -> Iterator[None]:
    """Run torch CPU ops on one thread: its OpenMP pool spin-waits after each op and would steal the cores
    another engine (ONNX Runtime) is about to use — measured 26 ms vs 23 ms per DICOM at batch 1."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def decide(probs: np.ndarray, positive_index: int, threshold: float, label_names: list[str]) -> str:
    """Positive class when its probability reaches the operating threshold; otherwise the likeliest other class."""
    if probs[positive_index] >= threshold:
        return label_names[positive_index]
    others = [k for k in range(len(probs)) if k != positive_index]
    return label_names[max(others, key=lambda k: probs[k])]
