"""Training throughput of ResNet50 at 224 px, end to end from the same images: the seed deck's pipeline vs medclf's.

- deck: `MDataset` DataLoader (DICOM decoded per item, PIL, torchvision transforms) -> torchvision resnet50,
  fp32, NCHW, Adam, eager (benchmarks/deck_baseline.py).
- medclf: the real training path: `build_setup` from the seed recipe (configs/seed_resnet50.yaml, random init)
  on a cache prepared from the same DICOMs, then `train_one_epoch` (memmap batches, batched augmentation on the
  device, bf16 autocast + channels_last + fused AdamW on CUDA; float32 on the CPU). `--compile` adds
  `train.compile=true` (default on CUDA only: compiling ResNet50 on a small CPU takes minutes).
Both use the same batch size and number of loader workers; after a warm-up round each, the pipelines take turns,
a round of steps each, so load changes on a shared machine hit both alike. On a CPU the model's arithmetic
dominates both, so the ratio is near 1 there; on a GPU the deck's per-item decode becomes the bottleneck.
Run: `python -m benchmarks.bench_train_step` (writes benchmarks/results/train_step.md).
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


def deck_stepper(paths, labels, batch: int, workers: int, total_steps: int, device: torch.device):
    """step(k) runs k steps of the deck's loop and returns the images trained on."""
    # one epoch long enough for every step, so all batches are full (as medclf's epoch_samples gives it)
    loader = deck_loader(paths, labels, batch, workers, train=True, pin_memory=device.type == "cuda",
                         epoch_samples=batch * total_steps)
    batches = iter(loader)
    model = deck_model(2).to(device)
    optimizer = deck_optimizer(model)

    def step(k: int) -> int:
        n = 0
        for _ in range(k):
            images, y = next(batches)
            deck_train_step(model, optimizer, normalise_batch(images.to(device)), y.to(device))
            n += len(y)
        return n

    return step


def medclf_stepper(cache_dir: Path, out_dir: Path, batch: int, workers: int, steps_per_round: int,
                   compile_model: bool, device: torch.device):
    """step(k) runs one `train_one_epoch` of k steps on medclf's real setup; also says how compile was applied."""
    from medclf.config import load_config
    from medclf.engine.setup import build_setup
    from medclf.engine.train import train_one_epoch

    overrides = ["model.pretrained=false", f"data.batch_size={batch}", f"data.workers={workers}",
                 f"data.epoch_samples={batch * steps_per_round}", f"train.device={device.type}",
                 f"train.compile={'true' if compile_model else 'false'}"]
    s = build_setup(load_config("seed_resnet50", overrides), cache_dir, out_dir)
    how = "off"
    if compile_model:
        trained = getattr(s, "train_model", s.model)  # the module train_one_epoch trains through
        if hasattr(trained, "_orig_mod") or getattr(trained, "_compiled_call_impl", None) is not None:
            how = "torch.compile applied by build_setup"
        else:  # an older build_setup that ignores train.compile
            trained.compile()
            how = "torch.compile applied by the benchmark: this build_setup ignores train.compile"
    epochs = iter(range(10**6))

    def step(k: int) -> int:
        s.steps_per_epoch = k
        train_one_epoch(s, next(epochs), None, False)
        return batch * k

    return step, how


def alternate(steppers: dict, warmup_rounds: dict, rounds: int, k: int, device: torch.device) -> dict[str, float]:
    """Warm-up rounds, then `rounds` rounds of k timed steps per pipeline in turn: {name: images/s}."""
    for name, step in steppers.items():
        for _ in range(warmup_rounds.get(name, 1)):
            step(k)
        common.sync(device)
    totals = {name: [0, 0.0] for name in steppers}
    for _ in range(rounds):
        for name, step in steppers.items():
            start = time.perf_counter()
            totals[name][0] += step(k)
            common.sync(device)
            totals[name][1] += time.perf_counter() - start
    return {name: n / sec for name, (n, sec) in totals.items()}


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("--workers", type=int, default=common.usable_cores())
    parser.add_argument("--batch", type=int, default=None, help="default 8 on CPU, 64 on CUDA")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (pipelines alternate round by round)")
    parser.add_argument("--round-steps", type=int, default=None, help="steps per round; default 1 on CPU, 10 on CUDA")
    parser.add_argument("--compile", dest="compile_model", action=argparse.BooleanOptionalAction, default=None,
                        help="train.compile=true for medclf (default: on with CUDA, off on CPU)")
    args = parser.parse_args(argv)
    if common.skipped_without_data(args.data, "train-step"):
        return 0
    device = common.pick_bench_device()
    cuda = device.type == "cuda"
    batch = args.batch or (64 if cuda else 8)
    k = args.round_steps or (10 if cuda else 1)
    compile_model = cuda if args.compile_model is None else args.compile_model
    if cuda:
        torch.backends.cudnn.benchmark = True
    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        from medclf.data.cache import Cache

        cache = Cache.open(common.prepare_sample_cache(args.data, tmp / "cache", size=256))
        paths, labels = common.cache_files(cache)
        total = k * (args.rounds + 1)
        steppers = {"deck": deck_stepper(paths, labels, batch, args.workers, total, device),
                    "medclf": medclf_stepper(cache.path, tmp / "run", batch, args.workers, k, False, device)[0]}
        how = None
        if compile_model:
            steppers["compiled"], how = medclf_stepper(cache.path, tmp / "run_c", batch, args.workers, k, True,
                                                       device)
        ips = alternate(steppers, {"compiled": 3}, args.rounds, k, device)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = [["deck: MDataset + torchvision resnet50, fp32, NCHW, Adam", f"{ips['deck']:.2f}"],
            ["medclf: cache + BatchTransform + build_setup/train_one_epoch (seed_resnet50)", f"{ips['medclf']:.2f}"]]
    if how:
        rows.append([f"medclf + train.compile=true ({how}; compile time excluded)", f"{ips['compiled']:.2f}"])
    settings = ("bf16 autocast, channels_last, fused AdamW" if cuda else "float32 (autocast and channels_last are "
                "CUDA-only in medclf), AdamW foreach")
    lines = [
        "# training-step benchmark (ResNet50, 224 px, end to end from the same DICOMs)",
        "",
        f"machine: {common.machine()}",
        f"device: {common.device_name(device)}",
        f"setup: batch {batch}, {args.workers} loader workers each; a warm-up round each, then {args.rounds} rounds "
        f"of {k} timed step(s) per pipeline in turn; {len(paths)} images from {args.data.name}; medclf settings on "
        f"this device: {settings}",
        "",
        *common.md_table(["pipeline", "train images/s"], rows),
        "",
        f"ratio (medclf / deck train images/s): **{ips['medclf'] / ips['deck']:.2f}x**"
        + (f"; with compile **{ips['compiled'] / ips['deck']:.2f}x**" if how else ""),
        "",
        "command: `python -m benchmarks.bench_train_step`",
    ]
    common.write_result("train_step", lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
