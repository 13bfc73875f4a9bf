"""int8 ONNX Runtime vs fp32 ONNX Runtime vs eager PyTorch on the CPU: ResNet50 @ 224, the model's graph only.

A seeded random ResNet50 run (speed does not depend on the weights) is exported as medclf exports every run
(`InferenceModule`: uint8 images in, resize, normalise, model, softmax out) and quantised as `medclf export
--int8` does (`medclf.runs.quantize.quantize_graph`: static QDQ, per-channel int8 weights, uint8 activations),
calibrated on 16 noise images (the ranges only matter for accuracy, which `export --int8` checks on real data).
Timed on already-decoded uint8 images, so the ratios are the engines':
- batch-1 latency, median and p95 of `--repeats` calls, the engines alternated call by call so a change in
  the machine's load hits all alike;
- batch-16 throughput, images/s, likewise alternated.
The CPU's int8 instructions decide the int8 speed-up: AVX2 (u8 x s8 multiply-add in 16-bit steps), AVX-512 VNNI /
AVX-VNNI (one-instruction u8 x s8 -> s32 dot products), AMX (int8 tile matrix multiply); they are printed from
/proc/cpuinfo. Run: `python -m benchmarks.bench_int8` (writes benchmarks/results/int8.md).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import common
from benchmarks.bench_inference import CACHE_SIZE, SIZE, make_run, percentiles

TARGET = 2.0  # int8 / fp32 ONNX Runtime, batch-1 median latency (issue 23)
INT8_FLAGS = {"avx2": "AVX2", "avx512f": "AVX-512F", "avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI",
              "amx_int8": "AMX-INT8", "amx_tile": "AMX-TILE"}


def int8_capabilities(cpuinfo: str | None = None) -> str:
    """'AVX2 yes, AVX-512F no, ...' from the first `flags` line of /proc/cpuinfo (or the text given)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return "unknown (no /proc/cpuinfo)"
    flags = next((set(line.split(":", 1)[1].split()) for line in cpuinfo.splitlines()
                  if line.startswith("flags")), set())
    return ", ".join(f"{name} {'yes' if flag in flags else 'no'}" for flag, name in INT8_FLAGS.items())


def ratio_lines(lat: dict[str, list[float]], tput: dict[str, float], batch: int) -> list[str]:
    """The results file's `ratio` lines (what `make bench`'s summary.md carries)."""
    (e_med, e_p95), (f_med, f_p95), (i_med, i_p95) = (percentiles(lat[k]) for k in ("eager", "fp32", "int8"))
    return [f"ratio (ONNX int8 / ONNX fp32), batch-1 median latency: **{f_med / i_med:.2f}x** (target >= "
            f"{TARGET}x); p95: {f_p95 / i_p95:.2f}x; throughput at batch {batch}: "
            f"**{tput['int8'] / tput['fp32']:.2f}x**",
            f"ratio (ONNX int8 / eager), batch-1 median latency: {e_med / i_med:.2f}x; throughput at batch {batch}: "
            f"{tput['int8'] / tput['eager']:.2f}x",
            f"ratio (ONNX fp32 / eager), batch-1 median latency: {e_med / f_med:.2f}x; throughput at batch {batch}: "
            f"{tput['fp32'] / tput['eager']:.2f}x"]


def alternated(engines: dict, images: np.ndarray, repeats: int) -> dict[str, list[float]]:
    """Milliseconds per call per engine, the engines' order rotated from repeat to repeat; one untimed call
    each first (session warm-up)."""
    names = list(engines)
    for name in names:
        engines[name](images)
    out: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats):
        for name in names[i % len(names):] + names[:i % len(names)]:
            start = time.perf_counter()
            engines[name](images)
            out[name].append((time.perf_counter() - start) * 1000)
    return out


def build(tmp: Path):
    """(engines by name, quantisation result): eager Predictor, fp32 and int8 ONNX Runtime sessions."""
    from medclf.runs import open_run
    from medclf.runs.onnx import OnnxBackend, export_metadata, export_onnx, onnx_session
    from medclf.runs.quantize import quantize_graph

    run = open_run(make_run(tmp / "run"), "cpu")
    eager = run.predictor()
    fp32_path = export_onnx(eager.module, run.image_size, tmp / "fp32.onnx", export_metadata(run, eager.module))
    rng = np.random.default_rng(0)
    calibration = (rng.integers(0, 256, size=(8, CACHE_SIZE, CACHE_SIZE), dtype=np.uint8) for _ in range(2))
    quantized = quantize_graph(fp32_path, tmp / "int8.onnx", calibration)
    fp32, int8 = (OnnxBackend(onnx_session(p)) for p in (fp32_path, quantized.path))
    return {"eager": eager.predict_arrays, "fp32": fp32, "int8": int8}, quantized


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("--repeats", type=int, default=30, help="batch-1 calls timed per engine")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=4, help="batches timed per engine for throughput")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-int8-"))
    try:
        t0 = time.perf_counter()
        engines, quantized = build(tmp)
        t1 = time.perf_counter()
        rng = np.random.default_rng(1)
        one = rng.integers(0, 256, size=(1, CACHE_SIZE, CACHE_SIZE), dtype=np.uint8)
        lat = alternated(engines, one, args.repeats)
        t2 = time.perf_counter()
        batch = rng.integers(0, 256, size=(args.batch, CACHE_SIZE, CACHE_SIZE), dtype=np.uint8)
        per_batch = alternated(engines, batch, args.batches)
        tput = {name: args.batch * 1000 / float(np.median(ms)) for name, ms in per_batch.items()}
        print(f"phases: export + quantise {t1 - t0:.0f} s, latency {t2 - t1:.0f} s, "
              f"throughput {time.perf_counter() - t2:.0f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    labels = {"eager": "eager PyTorch fp32 (--engine torch)", "fp32": "ONNX Runtime fp32 (--engine onnx)",
              "int8": "ONNX Runtime int8, static QDQ (--engine onnx-int8)"}
    rows = [[labels[k], *(f"{v:.1f}" for v in percentiles(lat[k])), f"{tput[k]:.1f}"] for k in labels]
    lines = [
        "# int8 benchmark (ResNet50, 224 px, uint8 image -> probability, model graph only, CPU)",
        "",
        f"machine: {common.machine()}",
        f"device: {common.device_name(torch.device('cpu'))}",
        f"CPU int8 capabilities: {int8_capabilities()}",
        f"graph: uint8 {CACHE_SIZE} px in, resize to {SIZE}, normalise, ResNet50, softmax; int8: "
        f"{quantized.n_quantized} model nodes quantised, calibrated on 16 noise images"
        + (f"; {quantized.fallback_note()}" if quantized.kept_float else ""),
        f"timing: {args.repeats} batch-1 calls and {args.batches} batches of {args.batch} per engine, engines "
        "alternated call by call",
        "",
        *common.md_table(["engine", "batch-1 median ms", "p95 ms", f"images/s at batch {args.batch}"], rows),
        "",
        *ratio_lines(lat, tput, args.batch),
        "",
        "command: `python -m benchmarks.bench_int8`",
    ]
    common.write_result("int8", lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
