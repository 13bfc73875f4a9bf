"""Speed of `medclf prepare` against the seed deck's per-image path, same DICOMs, same cores, one run.

Naive (the seed deck): pydicom `pixel_array` -> `/ max` -> uint8 -> PIL RGB -> torchvision `Resize(224)`, one
image per task in a `multiprocessing.Pool` with the same number of workers and the same start method.
Ours: the whole `prepare_rsna(..., size=224)` call (label check, draft-mode decode in worker processes,
cache write and content hash). Both clocks include starting the pool, neither includes importing modules
(done before timing). The two paths alternate `--repeats` times and each keeps its best time, so load from
other processes on a shared machine hits both alike.

Run from the repository root: `python -m benchmarks.bench_prepare` (writes benchmarks/results/prepare.md).
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from benchmarks import common
from medclf.data.prepare import default_workers, mp_context, prepare_rsna

SIZE = 224


def naive_one(path: str) -> np.ndarray:
    """The seed deck's per-image path."""
    import pydicom
    from PIL import Image
    from torchvision.transforms import Resize

    img = pydicom.dcmread(path).pixel_array
    img = (img / img.max() * 255).astype(np.uint8)
    return np.asarray(Resize(SIZE)(Image.fromarray(img).convert("RGB")))


@dataclass
class Timing:
    wall: float  # seconds
    cpu: float  # CPU seconds of this process and its worker processes


def _clock(fn: Callable[[], object]) -> Timing:
    before, start = os.times(), time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    for child in multiprocessing.active_children():  # prepare returns before its workers finish exiting:
        child.join()  # their CPU time counts only once they are reaped
    after = os.times()
    cpu = sum(getattr(after, k) - getattr(before, k) for k in ("user", "system", "children_user", "children_system"))
    return Timing(wall, cpu)


def time_naive(paths: list[str], workers: int) -> Timing:
    """One pass: start the pool, map every file, collect the arrays."""
    def go() -> None:
        with mp_context().Pool(workers) as pool:
            assert len(pool.map(naive_one, paths, chunksize=1)) == len(paths)
    return _clock(go)


def time_prepare(data: Path, workers: int, out: Path) -> Timing:
    """One whole `prepare_rsna` call into a fresh cache directory."""
    return _clock(lambda: prepare_rsna(data / "stage_2_train_images", data / "stage_2_train_labels.csv", out,
                                       size=SIZE, workers=workers, progress=False))


def run(data: Path, workers: int, repeats: int) -> tuple[Timing, Timing]:
    """Best (naive, prepare) timings (by wall time) over alternating repeats."""
    import torchvision.transforms  # noqa: F401  imported before timing; forked workers inherit it

    paths = sorted(str(p) for p in (data / "stage_2_train_images").glob("*.dcm"))
    naive_one(paths[0])
    naive, ours = [], []
    tmp = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    try:
        for k in range(repeats):
            naive.append(time_naive(paths, workers))
            ours.append(time_prepare(data, workers, tmp / f"cache{k}"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return min(naive, key=lambda t: t.wall), min(ours, key=lambda t: t.wall)


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    data = args.data.resolve()
    if common.skipped_without_data(data, "prepare"):
        return 0
    paths = sorted(str(p) for p in (data / "stage_2_train_images").glob("*.dcm"))
    load_before = os.getloadavg()[0]
    naive, ours = run(data, args.workers, args.repeats)
    n = len(paths)
    ratio = naive.wall / ours.wall
    lines = [
        "# prepare benchmark",
        "",
        f"machine: {common.machine()}; load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after",
        f"data: {n} RSNA DICOMs (1024 px, 8-bit JPEG Baseline) from {data.name}; target {SIZE} px; "
        f"{args.workers} workers; best of {args.repeats} alternating runs",
        "",
        "| path | seconds | images/s | CPU s | images per CPU s |",
        "|---|---|---|---|---|",
        f"| naive: seed deck per image (pixel_array, /max, RGB, Resize(224)) in a Pool | {naive.wall:.3f} "
        f"| {n / naive.wall:.1f} | {naive.cpu:.2f} | {n / naive.cpu:.1f} |",
        f"| medclf prepare: whole call (draft decode, workers, cache write + hash) | {ours.wall:.3f} "
        f"| {n / ours.wall:.1f} | {ours.cpu:.2f} | {n / ours.cpu:.1f} |",
        "",
        f"ratio (prepare / naive images/s): **{ratio:.2f}x** (CPU work: {naive.cpu / ours.cpu:.2f}x less)",
        "",
        "command: `python -m benchmarks.bench_prepare`",
        "",
    ]
    common.write_result("prepare", lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
