"""`medclf predict`: files or folders of DICOM/PNG/JPEG -> probabilities and decisions at the run's threshold."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd

from medclf.data.imageio import INPUT_SUFFIXES
from medclf.device import pick_device
from medclf.errors import MedclfError
from medclf.io import atomic_path
from medclf.outdirs import check_output_file
from medclf.runs import open_run


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders searched recursively for image suffixes (sorted, so output order is stable)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files.extend(sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES))
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
    force: bool = False,
) -> pd.DataFrame:
    """Returns (and writes to `out`) a table `path,prob,predicted,threshold,...,error`, one row per file: the
    columns of `evaluate`'s predictions table (see `Predictor.columns`), and the reason a file was not read.

    `engine`: "torch" (eager PyTorch) or "onnx" (ONNX Runtime on RUN/model.onnx when it is current, else on the
    run exported on the fly into a temp dir) or "onnx-int8" (RUN/model.int8.onnx from `export --int8`, deciding
    at the threshold chosen on its own probabilities). An `out` that exists is replaced only with `force`.
    """
    if out is not None:
        check_output_file(out, force)
    run = open_run(run_dir, pick_device(device))
    predictor = run.predictor(engine=engine)
    table = predictor.predict_files(expand_inputs(inputs), batch_size=batch_size, progress=progress)
    if out is not None:
        with atomic_path(out) as tmp:
            table.to_csv(tmp, index=False)
    return table
