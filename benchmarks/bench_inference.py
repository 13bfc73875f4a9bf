"""Inference on the CPU from DICOM file to probability: eager PyTorch vs ONNX Runtime (and the deck's path).

A ResNet50 run at 224 px (random weights: speed does not depend on them) is saved as a medclf run directory and
exported with `medclf.export.export_run` (parity printed). Every engine goes through the same medclf path
(`load_image` -> the run's Predictor: resize, normalise, model, all inside the exported ONNX graph), so the
ratio is the engine's:
- batch-1 latency per file, median and p95, engines alternated file by file so load changes hit both alike;
- throughput: batches of `--batch` files through `Predictor.predict_files` (decode included);
- the obvious ONNX Runtime levers (graph optimisation level, intra-op threads, thread spinning) on the model alone,
  batch 1, configurations taken in turn.
The deck's own per-file path (full-size decode, PIL, eager) is timed for reference at batch 1.
Run: `python -m benchmarks.bench_inference` (writes benchmarks/results/inference.md).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import common
from benchmarks.deck_baseline import deck_model, deck_predict_file

SIZE, CACHE_SIZE = 224, 256
TARGET = 1.6  # ONNX Runtime / eager, batch-1 median latency from DICOM file (issue 12)


def make_run(out: Path) -> Path:
    """A single-model run directory holding a seeded random ResNet50 (what `medclf train` would leave)."""
    from medclf.models import create_model, save_checkpoint

    torch.manual_seed(0)
    model = create_model("resnet50", num_classes=2, input_size=SIZE, label_names=["normal", "pneumonia"])
    with torch.no_grad():  # random ResNet50 logits are large; small ones keep probabilities off 0/1 so the
        model.model.fc.weight.mul_(1e-3)  # parity check compares informative numbers
    save_checkpoint(out / "best.pt", model, model.contract, config={}, extra={"cache_size": CACHE_SIZE})
    return out


def percentiles(ms: list[float]) -> tuple[float, float]:
    return float(np.median(ms)), float(np.percentile(ms, 95))


def ratio_lines(lat: dict[str, list[float]], tput: dict[str, float], batch: int) -> list[str]:
    """The results file's `ratio` lines (what `make bench`'s summary.md carries): ONNX Runtime vs eager at
    batch 1 (the target) and at `batch`, and medclf's eager path vs the deck's."""
    (e_med, e_p95), (o_med, o_p95), (d_med, _) = (percentiles(lat[k]) for k in ("eager", "onnx", "deck"))
    return [f"ratio (ONNX Runtime / eager), batch-1 median latency: **{e_med / o_med:.2f}x** (target >= {TARGET}x); "
            f"p95: {e_p95 / o_p95:.2f}x; throughput at batch {batch}: **{tput['onnx'] / tput['eager']:.2f}x**",
            f"ratio (medclf eager / deck), batch-1 median latency: {d_med / e_med:.2f}x"]


def latency(engines: dict, files: list[Path]) -> dict[str, list[float]]:
    """Milliseconds per file per engine, batch 1, the engines' order rotated from file to file."""
    out: dict[str, list[float]] = {name: [] for name in engines}
    names = list(engines)
    for i, path in enumerate(files):
        for name in names[i % len(names):] + names[:i % len(names)]:
            start = time.perf_counter()
            fn = engines[name]
            if name == "deck":
                fn(path)
            else:
                fn.predict_files([path])
            out[name].append((time.perf_counter() - start) * 1000)
    return out


def throughput(engines: dict, files: list[Path], batch: int) -> dict[str, float]:
    """images/s through the Predictor (decode + transform + model) per engine, batch by batch alternated."""
    seconds = {name: 0.0 for name in engines}
    for start in range(0, len(files), batch):
        chunk = files[start:start + batch]
        for name, fn in engines.items():
            t0 = time.perf_counter()
            table = fn.predict_files(chunk, batch_size=batch)
            seconds[name] += time.perf_counter() - t0
            assert (table["error"] == "").all()
    return {name: len(files) / s for name, s in seconds.items()}


def model_only_levers(onnx_path: Path, predictor, repeats: int) -> list[list]:
    """Batch-1 latency (ms) of one decoded image (resize, normalise, model) in eager PyTorch and ONNX Runtime with
    other settings, configurations taken in turn. Changing torch's thread count rebuilds its thread pool, so each
    eager timing follows an untimed call."""
    from medclf.runs.onnx import OnnxBackend, onnx_session

    x = np.random.default_rng(0).integers(0, 256, size=(1, CACHE_SIZE, CACHE_SIZE), dtype=np.uint8)
    cores = common.usable_cores()
    default_threads = torch.get_num_threads()
    configs: dict[str, tuple[int | None, object]] = {}
    for n in sorted({default_threads, 1}, reverse=True):
        configs[f"eager PyTorch fp32, {n} threads"] = (n, lambda: predictor.predict_arrays(x))
    for level, ort_threads, spin in [("all", cores, False), ("basic", cores, False), ("disable", cores, False),
                                     ("all", 1, False), ("all", cores, True)]:
        fn = OnnxBackend(onnx_session(onnx_path, threads=ort_threads, opt_level=level, spinning=spin))
        name = f"ONNX Runtime fp32, optimisation {level}, {ort_threads} intra-op threads"
        name += ", threads spin (ORT's default)" if spin else ", no spinning (medclf's default)"
        configs[name] = (None, lambda f=fn: f(x))
    times: dict[str, list[float]] = {name: [] for name in configs}
    try:
        with torch.no_grad():
            for _ in range(repeats + 1):
                for name, (torch_threads, fn) in configs.items():
                    if torch_threads is not None:
                        torch.set_num_threads(torch_threads)
                        fn()
                    t0 = time.perf_counter()
                    fn()
                    times[name].append((time.perf_counter() - t0) * 1000)
    finally:
        torch.set_num_threads(default_threads)
    # the first round is a warm-up
    return [[name, f"{np.median(ms[1:]):.1f}", f"{np.percentile(ms[1:], 95):.1f}"] for name, ms in times.items()]


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("--files", type=int, default=20, help="files timed at batch 1")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--throughput-files", type=int, default=64, help="files timed in batches")
    parser.add_argument("--repeats", type=int, default=10, help="model-only timings per lever")
    args = parser.parse_args(argv)
    if common.skipped_without_data(args.data, "inference"):
        return 0
    from medclf.export import export_run
    from medclf.runs import open_run

    device = torch.device("cpu")  # the question is CPU serving; ONNX Runtime's CUDA provider is a separate install
    files = sorted((args.data / "stage_2_train_images").glob("*.dcm"))
    tmp = Path(tempfile.mkdtemp(prefix="bench-infer-"))
    try:
        run_dir = make_run(tmp / "run")
        exported = export_run(run_dir, "onnx")
        run = open_run(run_dir, device)
        eager, onnx = run.predictor(), run.predictor(engine="onnx")  # onnx: uses the current RUN/model.onnx
        torch.manual_seed(0)
        deck = deck_model(2).eval()
        engines = {"eager": eager, "onnx": onnx, "deck": lambda path: deck_predict_file(deck, path)}
        latency(engines, files[:2])  # warm-up
        t0 = time.perf_counter()
        lat = latency(engines, files[: args.files])
        t1 = time.perf_counter()
        tput = throughput({"eager": eager, "onnx": onnx}, files[: args.throughput_files], args.batch)
        t2 = time.perf_counter()
        levers = model_only_levers(exported.path, eager, args.repeats)
        print(f"phases: export {exported.seconds:.0f} s, latency {t1 - t0:.0f} s, throughput {t2 - t1:.0f} s, "
              f"levers {time.perf_counter() - t2:.0f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    (e_med, e_p95), (o_med, o_p95), (d_med, d_p95) = (percentiles(lat[k]) for k in ("eager", "onnx", "deck"))
    rows = [
        ["deck (pydicom full decode, /max, PIL, Resize, eager fp32)", f"{d_med:.1f}", f"{d_p95:.1f}", "-"],
        ["medclf eager PyTorch (load_image -> Predictor: resize, normalise, model)", f"{e_med:.1f}", f"{e_p95:.1f}",
         f"{tput['eager']:.1f}"],
        ["medclf ONNX Runtime (same Predictor, the whole graph exported; --engine onnx)", f"{o_med:.1f}", f"{o_p95:.1f}", f"{tput['onnx']:.1f}"],
    ]
    lines = [
        "# inference benchmark (ResNet50, 224 px, DICOM file -> probability, CPU)",
        "",
        f"machine: {common.machine()}",
        f"device: {common.device_name(device)}; onnxruntime {onnx_version()}",
        f"data: {args.files} RSNA DICOMs at batch 1 (engines alternated per file), "
        f"{min(len(files), args.throughput_files)} for throughput at batch {args.batch}; decode to {CACHE_SIZE} px, "
        f"model input {SIZE} px",
        f"export: {exported.summary()}",
        "",
        *common.md_table(["path", "batch-1 latency median ms", "p95 ms", f"images/s at batch {args.batch}"], rows),
        "",
        *ratio_lines(lat, tput, args.batch),
        "",
        "## levers, model only (batch 1, no decode)",
        "",
        *common.md_table(["engine and settings", "median ms", "p95 ms"], levers),
        "",
        "command: `python -m benchmarks.bench_inference`",
    ]
    common.write_result("inference", lines, args.out)
    return 0


def onnx_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


if __name__ == "__main__":
    raise SystemExit(main())
