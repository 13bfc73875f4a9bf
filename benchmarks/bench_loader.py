"""Training input pipeline: the seed deck's `MDataset` against medclf's cache loader, same images, same workers.

Both produce what the model consumes: shuffled batches of `B x 3 x 224 x 224` float tensors, randomly flipped
and ImageNet-normalised, on the training device (CUDA when present).
- deck: `MDataset` (pydicom decode of the full 1024 px file per item, `/max`, PIL RGB, `Resize(224)`, flip,
  `ToTensor`) in a DataLoader; the batch is normalised with one op (see benchmarks/deck_baseline.py).
- medclf: `CacheDataset` over a cache prepared from the same DICOMs at 256 px (prepared inside the benchmark,
  in a temp dir, not timed: it is done once per dataset), one memmap read per batch (`__getitems__`), then
  `BatchTransform` (uint8 -> resize 224 -> flip -> normalise) as one tensor op per step on the device.
All get the same epochs (PASSES shuffled passes over the images) and a warm-up epoch (workers started, files in
the page cache); then the pipelines take turns, one epoch each, until each has run `--seconds`. medclf's main
process is also timed at 1 torch thread: on an oversubscribed CPU, 2-thread OpenMP regions stall whenever one
thread is descheduled (the deck's per-item work runs in single-threaded workers and does not meet this).
Run: `python -m benchmarks.bench_loader` (writes benchmarks/results/loader.md).
"""

from __future__ import annotations

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
    from medclf.contract import DataContract

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


def with_threads(n: int, epoch_fn):
    """`epoch_fn` run with `n` torch intra-op threads in this (the main) process."""

    def epoch() -> int:
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return epoch_fn()
        finally:
            torch.set_num_threads(before)

    return epoch


def measure_alternating(epoch_fns: dict, seconds: float, device: torch.device) -> dict[str, tuple[float, int, float]]:
    """A warm-up epoch each, then rounds of one epoch per pipeline (so load changes on a shared machine hit all
    alike) until every pipeline has run >= `seconds`: {name: (images/s, images, seconds)}."""
    for fn in epoch_fns.values():
        fn()
    totals = {name: [0, 0.0] for name in epoch_fns}
    while any(t[1] < seconds for t in totals.values()):
        for name, fn in epoch_fns.items():
            if totals[name][1] >= seconds:
                continue
            start = time.perf_counter()
            totals[name][0] += fn()
            common.sync(device)
            totals[name][1] += time.perf_counter() - start
    return {name: (n / s, n, s) for name, (n, s) in totals.items()}


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("--workers", type=int, default=common.usable_cores())
    parser.add_argument("--seconds", type=float, default=5.0, help="minimum timed seconds per pipeline")
    args = parser.parse_args(argv)
    if common.skipped_without_data(args.data, "loader"):
        return 0
    device = common.pick_bench_device()
    tmp = Path(tempfile.mkdtemp(prefix="bench-loader-"))
    try:
        from medclf.data.cache import Cache

        t0 = time.perf_counter()
        cache = Cache.open(common.prepare_sample_cache(args.data, tmp / "cache", size=256))
        prep_s = time.perf_counter() - t0
        paths, labels = common.cache_files(cache)
        w = args.workers
        fns = {
            "deck": deck_epoch_fn(paths, labels, w, device),
            "ours": ours_epoch_fn(cache, w, device),
            "ours_1t": with_threads(1, ours_epoch_fn(cache, w, device)),
            "ours_0w": ours_epoch_fn(cache, 0, device),
            "deck_0w": deck_epoch_fn(paths, labels, 0, device),
            "read": ours_epoch_fn(cache, w, device, transform_batches=False),
        }
        r = measure_alternating(fns, args.seconds, device)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    threads = torch.get_num_threads()
    labels_ = {
        "deck": f"deck MDataset (pydicom per item, /max, PIL RGB, Resize(224), flip, ToTensor), {w} workers",
        "ours": f"medclf CacheDataset + BatchTransform (memmap 256 px, batched resize/flip/normalise), {w} workers, "
                f"main process {threads} torch threads (default)",
        "ours_1t": f"medclf, same, {w} workers, main process 1 torch thread",
        "ours_0w": f"medclf, same, 0 workers (batches read in the main process), {threads} torch threads",
        "deck_0w": "deck MDataset, same, 0 workers (items decoded in the main process)",
        "read": f"medclf uint8 batches only, {w} workers (the CPU's share when the transform runs on a GPU)",
    }
    rows = [[labels_[k], f"{v[0]:.1f}", v[1], f"{v[2]:.2f}"] for k, v in r.items()]
    deck = r["deck"][0]
    lines = [
        "# loader benchmark (training input pipeline)",
        "",
        f"machine: {common.machine()}",
        f"device: {common.device_name(device)}",
        f"data: {len(paths)} RSNA DICOMs (1024 px, JPEG Baseline) from {args.data.name}; batches of {BATCH} x 3 x "
        f"{SIZE} x {SIZE} normalised float32, random flip; epochs of {PASSES} shuffled passes; a warm-up epoch "
        f"each, then pipelines alternated epoch by epoch until each ran >= {args.seconds:g} s. Cache prepared once "
        f"from the same files at 256 px in {prep_s:.1f} s (not in the timing).",
        "",
        *common.md_table(["pipeline", "images/s", "images", "seconds"], rows),
        "",
        f"ratio (medclf / deck images/s, {w} workers each, full pipeline on {device.type}, default threads): "
        f"**{r['ours'][0] / deck:.1f}x** (target >= 50x)",
        f"ratio (same, medclf's main process at 1 torch thread): **{r['ours_1t'][0] / deck:.1f}x**",
        f"ratio (medclf / deck images/s, 0 workers each — medclf's default, no worker processes needed): "
        f"**{r['ours_0w'][0] / r['deck_0w'][0]:.1f}x** (target >= 50x)",
        f"ratio (medclf at 0 workers / deck at {w} workers): {r['ours_0w'][0] / deck:.1f}x",
        f"ratio (medclf CPU-side uint8 batches / deck images/s, {w} workers each): {r['read'][0] / deck:.0f}x",
        "",
        "command: `python -m benchmarks.bench_loader`",
    ]
    common.write_result("loader", lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
