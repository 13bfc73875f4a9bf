"""Speed of `medclf prepare` against the seed deck's per-image path, same DICOMs, same cores, one run.

Naive (the seed deck): pydicom `pixel_array` -> `/ max` -> uint8 -> PIL RGB -> torchvision `Resize(224)`, one
image per task in a `multiprocessing.Pool` with the same number of workers. Its pool is started and warmed
(torchvision imported) before the clock starts, which favours the naive path.
Ours: the whole `prepare_rsna(..., size=224)` call, clock started before anything (pool start, label check,
draft-mode decode, cache write and hashing all included).

Run from the repository root: `python -m benchmarks.bench_prepare` (writes benchmarks/results/prepare.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from medclf.data.prepare import default_workers, mp_context, prepare_rsna
from medclf.io import write_text

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "data" / "rsna-sample"
RESULTS = REPO / "benchmarks" / "results" / "prepare.md"
SIZE = 224


def _warm() -> None:
    import pydicom  # noqa: F401
    import torchvision.transforms  # noqa: F401


def naive_one(path: str) -> np.ndarray:
    """The seed deck's per-image path."""
    import pydicom
    from PIL import Image
    from torchvision.transforms import Resize

    img = pydicom.dcmread(path).pixel_array
    img = (img / img.max() * 255).astype(np.uint8)
    return np.asarray(Resize(SIZE)(Image.fromarray(img).convert("RGB")))


def time_naive(paths: list[str], workers: int, repeats: int) -> float:
    """Best wall time of `repeats` passes over `paths` with a warm pool."""
    best = float("inf")
    with mp_context().Pool(workers, initializer=_warm) as pool:
        pool.map(naive_one, paths[:workers])  # warm-up: every worker has imported and decoded once
        for _ in range(repeats):
            start = time.perf_counter()
            out = pool.map(naive_one, paths, chunksize=1)
            best = min(best, time.perf_counter() - start)
            assert len(out) == len(paths)
    return best


def time_prepare(data: Path, workers: int, repeats: int) -> float:
    """Best wall time of whole `prepare_rsna` calls, each into a fresh cache directory."""
    best = float("inf")
    tmp = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    try:
        for k in range(repeats):
            start = time.perf_counter()
            prepare_rsna(data / "stage_2_train_images", data / "stage_2_train_labels.csv", tmp / f"cache{k}",
                         size=SIZE, workers=workers, progress=False)
            best = min(best, time.perf_counter() - start)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return best


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}; {default_workers()} usable cores (os.cpu_count()={os.cpu_count()}); {platform.platform()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="RSNA-layout folder")
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    data = args.data.resolve()
    if not (data / "stage_2_train_images").is_dir():
        print(f"skipped: {data} not found")
        return 0
    paths = sorted(str(p) for p in (data / "stage_2_train_images").glob("*.dcm"))
    naive_s = time_naive(paths, args.workers, args.repeats)
    ours_s = time_prepare(data, args.workers, args.repeats)
    naive_ips, ours_ips = len(paths) / naive_s, len(paths) / ours_s
    ratio = ours_ips / naive_ips
    lines = [
        "# prepare benchmark",
        "",
        f"machine: {machine()}",
        f"data: {len(paths)} RSNA DICOMs (1024 px, 8-bit JPEG Baseline) from {data.name}; target {SIZE} px; "
        f"{args.workers} workers; best of {args.repeats}",
        "",
        "| path | seconds | images/s |",
        "|---|---|---|",
        f"| naive (seed deck: pixel_array, /max, RGB, Resize(224)); warm pool | {naive_s:.3f} | {naive_ips:.1f} |",
        f"| medclf prepare (draft decode, whole command incl. pool start and cache write) | {ours_s:.3f} | {ours_ips:.1f} |",
        "",
        f"ratio (prepare / naive images/s): **{ratio:.2f}x**",
        "",
        "command: `python -m benchmarks.bench_prepare`",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    write_text(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
