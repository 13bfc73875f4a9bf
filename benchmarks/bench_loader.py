"""Training input pipeline: the seed deck's `MDataset` against medclf's cache loader, same images, same workers.

Both produce what the model consumes: shuffled batches of `B x 3 x 224 x 224` float tensors, randomly flipped
and ImageNet-normalised, on the training device (CUDA when present).
- deck: `MDataset` (pydicom decode of the full 1024 px file per item, `/max`, PIL RGB, `Resize(224)`, flip,
  `ToTensor`) in a DataLoader; the batch is normalised with one op (see benchmarks/deck_baseline.py).
- medclf: `CacheDataset` over a cache prepared from the same DICOMs at 256 px (prepared inside the benchmark,
  in a temp dir, not timed: it is done once per dataset), one memmap read per batch (`__getitems__`), then
  `BatchTransform` (uint8 -> resize 224 -> flip -> normalise) as one tensor op per step on the device.
Both get the same epochs (PASSES shuffled passes over the images), a warm-up epoch (workers started, files in
the page cache), then whole epochs for at least `--seconds`.
Run: `python -m benchmarks.bench_loader` (writes benchmarks/results/loader.md).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from benchmarks import common
from benchmarks.deck_baseline import IMAGENET_MEAN, IMAGENET_STD, deck_loader, normalise_batch

BATCH = 32
SIZE = 224
# An epoch is PASSES shuffled passes over the sample, for both pipelines: real epochs are thousands of images,
# and 110-image epochs would mostly time the DataLoader's hand-over at each epoch start.
PASSES = 5


def resnet_contract():
    from medclf.models.contract import DataContract

    return DataContract(model_name="resnet50", num_classes=2, label_names=["normal", "pneumonia"], positive_index=1,
                        input_size=SIZE, in_chans=3, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))


def ours_epoch_fn(cache, workers: int, device: torch.device, transform_batches: bool = True):
    """One epoch of medclf's training input path; returns a function giving the number of images produced.

    `transform_batches=False` stops at the uint8 batches: the CPU's share when the transform runs on a GPU."""
    from medclf.data.dataset import CacheDataset, make_loader
    from medclf.data.samplers import create_sampler
    from medclf.data.transforms import Augment, make_transform

    dataset = CacheDataset(cache)
    sampler = create_sampler("shuffle", dataset, num_samples=PASSES * len(dataset), seed=0)
    loader = make_loader(dataset, BATCH, sampler=sampler, workers=workers, pin_memory=device.type == "cuda")
    transform = make_transform(resnet_contract(), train=True, augment=Augment(flip=True))
    gen = torch.Generator().manual_seed(0)

    def epoch() -> int:
        n = 0
        for images, _, _ in loader:
            if not transform_batches:
                n += images.shape[0]
                continue
            x = transform(images.to(device, non_blocking=True), gen)
            n += x.shape[0]
        assert not transform_batches or (x.shape[1:] == (3, SIZE, SIZE) and x.dtype == torch.float32)
        return n

    return epoch


def deck_epoch_fn(paths, labels, workers: int, device: torch.device):
    loader = deck_loader(paths, labels, BATCH, workers, train=True, pin_memory=device.type == "cuda",
                         epoch_samples=PASSES * len(paths))

    def epoch() -> int:
        n = 0
        for images, _ in loader:
            x = normalise_batch(images.to(device, non_blocking=True))
            n += x.shape[0]
        assert x.shape[1:] == (3, SIZE, SIZE) and x.dtype == torch.float32
        return n

    return epoch


def measure(epoch_fn, seconds: float, device: torch.device) -> tuple[float, int, float]:
    """Warm-up epoch, then whole epochs for at least `seconds`: (images/s, images, seconds)."""
    epoch_fn()
    common.sync(device)
    n, s = common.run_for(epoch_fn, seconds, device)
    return n / s, n, s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=common.DEFAULT_DATA, help="RSNA-layout folder")
    parser.add_argument("--workers", type=int, default=common.usable_cores())
    parser.add_argument("--seconds", type=float, default=5.0, help="minimum timed seconds per side")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not common.data_available(args.data):
        print(f"loader benchmark skipped: {args.data} not found")
        return 0
    device = common.pick_bench_device()
    tmp = Path(tempfile.mkdtemp(prefix="bench-loader-"))
    try:
        from medclf.data.cache import Cache

        t0 = time.perf_counter()
        cache = Cache.open(common.prepare_sample_cache(args.data, tmp / "cache", size=256))
        prep_s = time.perf_counter() - t0
        paths, labels = common.cache_files(cache)
        ours = measure(ours_epoch_fn(cache, args.workers, device), args.seconds, device)
        deck = measure(deck_epoch_fn(paths, labels, args.workers, device), args.seconds, device)
        ours0 = measure(ours_epoch_fn(cache, 0, device), args.seconds / 2, device)
        read = measure(ours_epoch_fn(cache, args.workers, device, transform_batches=False), args.seconds / 2, device)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ratio = ours[0] / deck[0]
    rows = [
        [f"deck MDataset (pydicom per item, /max, PIL RGB, Resize(224), flip, ToTensor), {args.workers} workers",
         f"{deck[0]:.1f}", deck[1], f"{deck[2]:.2f}"],
        [f"medclf CacheDataset + BatchTransform (memmap 256 px, batched resize/flip/normalise), {args.workers} workers",
         f"{ours[0]:.1f}", ours[1], f"{ours[2]:.2f}"],
        ["medclf, same, 0 workers (batches read in the main process)", f"{ours0[0]:.1f}", ours0[1], f"{ours0[2]:.2f}"],
        [f"medclf uint8 batches only, {args.workers} workers (the CPU's share when the transform runs on a GPU)",
         f"{read[0]:.1f}", read[1], f"{read[2]:.2f}"],
    ]
    lines = [
        "# loader benchmark (training input pipeline)",
        "",
        f"machine: {common.machine()}",
        f"device: {common.device_name(device)}",
        f"data: {len(paths)} RSNA DICOMs (1024 px, JPEG Baseline) from {args.data.name}; batches of {BATCH} x 3 x "
        f"{SIZE} x {SIZE} normalised float32, random flip; epochs of {PASSES} shuffled passes; >= {args.seconds:g} s "
        f"of whole epochs per side after a warm-up epoch. Cache prepared once from the same files at 256 px in "
        f"{prep_s:.1f} s (not in the timing).",
        "",
        *common.md_table(["pipeline", "images/s", "images", "seconds"], rows),
        "",
        f"ratio (medclf / deck images/s, {args.workers} workers each, full pipeline on {device.type}): "
        f"**{ratio:.1f}x** (target >= 50x)",
        f"ratio (medclf CPU-side batches / deck images/s, {args.workers} workers each): {read[0] / deck[0]:.0f}x",
        "",
        "command: `python -m benchmarks.bench_loader`",
    ]
    common.write_result("loader", lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
