"""`benchmarks/bench_int8.py`: the CPU's int8 capabilities and the ratio lines `make bench` carries."""

from __future__ import annotations

from benchmarks import bench_int8, run_all


def test_int8_capabilities_read_from_the_flags_line():
    cpuinfo = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni amx_tile\nprocessor\t: 1\n"
    assert bench_int8.int8_capabilities(cpuinfo) == ("AVX2 yes, AVX-512F yes, AVX-512 VNNI yes, AVX-VNNI no, "
                                                     "AMX-INT8 no, AMX-TILE yes")
    assert bench_int8.int8_capabilities("no flags here").startswith("AVX2 no,")


def test_ratio_lines_compare_int8_with_fp32_and_eager():
    # medians: eager 60, fp32 40, int8 10 ms -> 4.00x over fp32, 6.00x over eager; batch 16: 20 / 50 / 100 img/s
    lat = {"eager": [50.0, 60.0, 70.0], "fp32": [30.0, 40.0, 50.0], "int8": [5.0, 10.0, 15.0]}
    lines = bench_int8.ratio_lines(lat, {"eager": 20.0, "fp32": 50.0, "int8": 100.0}, 16)
    assert lines[0].startswith("ratio (ONNX int8 / ONNX fp32), batch-1 median latency: **4.00x** (target >= 2.0x)")
    assert "throughput at batch 16: **2.00x**" in lines[0]
    assert lines[1] == "ratio (ONNX int8 / eager), batch-1 median latency: 6.00x; throughput at batch 16: 5.00x"
    assert "bench_int8" in run_all.discover() and run_all.result_file("bench_int8").name == "int8.md"
