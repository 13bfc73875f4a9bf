"""`make bench` (benchmarks.run_all) runs the inference benchmark and its summary carries the ONNX/eager ratio."""

from __future__ import annotations

import os
import time

from benchmarks import bench_inference, run_all


def test_make_bench_runs_the_inference_benchmark():
    assert "bench_inference" in run_all.discover()
    assert run_all.result_file("bench_inference").name == "inference.md"


def test_the_summary_carries_the_onnx_batch1_ratio(tmp_path):
    # eager 30/40/50 ms, ONNX 15/20/25 ms: median 40 vs 20 -> 2.00x; batch 16 at 10 vs 18.6 images/s -> 1.86x
    lat = {"eager": [30.0, 40.0, 50.0], "onnx": [15.0, 20.0, 25.0], "deck": [60.0, 60.0, 60.0]}
    lines = bench_inference.ratio_lines(lat, {"eager": 10.0, "onnx": 18.6}, 16)
    results = tmp_path / "inference.md"
    results.write_text("# inference benchmark\n\n| table |\n\n" + "\n".join(lines) + "\n\ncommand: ...\n")
    picked = run_all.ratio_lines(results, since=time.time() - 60)
    assert picked[0].startswith("ratio (ONNX Runtime / eager), batch-1 median latency: **2.00x** (target >= 1.6x)")
    assert "throughput at batch 16: **1.86x**" in picked[0]
    assert picked[1] == "ratio (medclf eager / deck), batch-1 median latency: 1.50x"
    os.utime(results, (time.time() - 3600, time.time() - 3600))  # a skipped benchmark's old file is not reported
    assert run_all.ratio_lines(results, since=time.time() - 60) == []
