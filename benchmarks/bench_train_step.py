"""Training throughput of ResNet50 at 224 px, end to end from the same images: the seed deck's pipeline vs medclf's.

- deck: `MDataset` DataLoader (DICOM decoded per item, PIL, torchvision transforms) -> torchvision resnet50,
  fp32, NCHW, Adam, eager (benchmarks/deck_baseline.py).
- medclf: the real training path: `build_setup` from the seed recipe (configs/seed_resnet50.yaml, random init)
  on a cache prepared from the same DICOMs, then `train_one_epoch` (memmap batches, batched augmentation on the
  device, bf16 autocast + channels_last + fused AdamW on CUDA; float32 on the CPU). `--compile` adds
  `train.compile=true` (default on CUDA only: compiling ResNet50 on a small CPU takes minutes).
Both use the same batch size and number of loader workers; each gets warm-up steps, then `--steps` timed
steps. On a CPU the model's arithmetic dominates both, so the ratio is near 1 there; on a GPU the deck's
per-item decode becomes the bottleneck. Run: `python -m benchmarks.bench_train_step` (writes
benchmarks/results/train_step.md).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import common
from benchmarks.deck_baseline import deck_loader, deck_model, deck_optimizer, deck_train_step, normalise_batch


def time_deck(paths, labels, batch: int, workers: int, warmup: int, steps: int, device: torch.device) -> float:
    """images/s of the deck's loop: `warmup` untimed steps, then `steps` timed ones."""
    # one epoch long enough for every step, so all batches are full (as medclf's epoch_samples gives it)
    loader = deck_loader(paths, labels, batch, workers, train=True, pin_memory=device.type == "cuda",
                         epoch_samples=batch * (warmup + steps))
    batches = iter(loader)
    model = deck_model(2).to(device)
    optimizer = deck_optimizer(model)

    def step() -> int:
        images, y = next(batches)
        deck_train_step(model, optimizer, normalise_batch(images.to(device)), y.to(device))
        return len(y)

    for _ in range(warmup):
        step()
    common.sync(device)
    start = time.perf_counter()
    n = sum(step() for _ in range(steps))
    common.sync(device)
    return n / (time.perf_counter() - start)


def time_medclf(cache_dir: Path, out_dir: Path, batch: int, workers: int, warmup: int, steps: int,
                compile_model: bool, device: torch.device) -> tuple[float, str]:
    """images/s of `train_one_epoch` over `steps` full batches after `warmup` steps; and how compile was applied."""
    from medclf.config import load_config
    from medclf.engine.setup import build_setup
    from medclf.engine.train import train_one_epoch

    overrides = ["model.pretrained=false", f"data.batch_size={batch}", f"data.workers={workers}",
                 f"data.epoch_samples={batch * max(warmup, steps)}", f"train.device={device.type}",
                 f"train.compile={'true' if compile_model else 'false'}"]
    s = build_setup(load_config("seed_resnet50", overrides), cache_dir, out_dir)
    how = "off"
    if compile_model:
        if getattr(s.model, "_compiled_call_impl", None) is None and not hasattr(s.model, "_orig_mod"):
            s.model.compile()  # build_setup does not apply train.compile yet (see docs/performance.md)
            how = "on (applied by the benchmark: build_setup ignores train.compile)"
        else:
            how = "on (build_setup)"
    s.steps_per_epoch = warmup
    train_one_epoch(s, 0, None, False)
    common.sync(device)
    s.steps_per_epoch = steps
    start = time.perf_counter()
    train_one_epoch(s, 1, None, False)
    common.sync(device)
    return batch * steps / (time.perf_counter() - start), how


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=common.DEFAULT_DATA, help="RSNA-layout folder")
    parser.add_argument("--workers", type=int, default=common.usable_cores())
    parser.add_argument("--batch", type=int, default=None, help="default 8 on CPU, 64 on CUDA")
    parser.add_argument("--steps", type=int, default=None, help="timed steps; default 3 on CPU, 30 on CUDA")
    parser.add_argument("--compile", dest="compile_model", action=argparse.BooleanOptionalAction, default=None,
                        help="train.compile=true for medclf (default: on with CUDA, off on CPU)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not common.data_available(args.data):
        print(f"train-step benchmark skipped: {args.data} not found")
        return 0
    device = common.pick_bench_device()
    cuda = device.type == "cuda"
    batch = args.batch or (64 if cuda else 8)
    steps = args.steps or (30 if cuda else 3)
    warmup = 5 if cuda else 1
    compile_model = cuda if args.compile_model is None else args.compile_model
    if cuda:
        torch.backends.cudnn.benchmark = True
    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        from medclf.data.cache import Cache

        cache = Cache.open(common.prepare_sample_cache(args.data, tmp / "cache", size=256))
        paths, labels = common.cache_files(cache)
        deck = time_deck(paths, labels, batch, args.workers, warmup, steps, device)
        ours, _ = time_medclf(cache.path, tmp / "run", batch, args.workers, warmup, steps, False, device)
        rows = [["deck: MDataset + torchvision resnet50, fp32, NCHW, Adam", f"{deck:.2f}"],
                ["medclf: cache + BatchTransform + build_setup/train_one_epoch (seed_resnet50)", f"{ours:.2f}"]]
        compiled = None
        if compile_model:
            compiled, how = time_medclf(cache.path, tmp / "run_c", batch, args.workers, warmup + 2, steps, True,
                                        device)
            rows.append([f"medclf + train.compile=true ({how}; compile time excluded)", f"{compiled:.2f}"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    settings = ("bf16 autocast, channels_last, fused AdamW" if cuda else "float32 (autocast and channels_last are "
                "CUDA-only in medclf), AdamW foreach")
    lines = [
        "# training-step benchmark (ResNet50, 224 px, end to end from the same DICOMs)",
        "",
        f"machine: {common.machine()}",
        f"device: {common.device_name(device)}",
        f"setup: batch {batch}, {args.workers} loader workers each, {warmup} warm-up + {steps} timed steps; "
        f"{len(paths)} images from {args.data.name}; medclf settings on this device: {settings}",
        "",
        *common.md_table(["pipeline", "train images/s"], rows),
        "",
        f"ratio (medclf / deck train images/s): **{ours / deck:.2f}x**"
        + (f"; with compile **{compiled / deck:.2f}x**" if compiled else ""),
        "",
        "command: `python -m benchmarks.bench_train_step`",
    ]
    common.write_result("train_step", lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
