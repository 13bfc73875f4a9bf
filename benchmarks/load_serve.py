"""Bounded load test of `medclf serve`: N requests from C concurrent clients on 127.0.0.1, then it stops.

It starts `python -m medclf serve RUN --host 127.0.0.1 --port 0` as a child process, waits for /api/health,
sends a warm-up round (not counted), then exactly `--requests` POST /api/predict (one DICOM each, heatmap on)
from `--clients` threads, samples the server's resident memory (VmRSS from /proc) every 25 requests, stops
the server and prints requests/s, latency percentiles and the memory series. Exit status 1 when a request
failed or memory grew by more than max(20 MiB, 5 %) from after warm-up to the end.

Without `--run` it serves a stand-in: a randomly initialised resnet18 at 224 px (serving cost does not depend
on the weights) and a synthetic 1024 px JPEG-Baseline chest DICOM (the RSNA file format and size).

Run from the repository root: `python -m benchmarks.load_serve [--run RUN] [--requests 200] [--clients 8]`
(writes benchmarks/results/load_serve.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "load_serve.md"
HOST = "127.0.0.1"  # never anything else: this script must not load a machine it does not own


def stand_in_run(out: Path, model: str = "resnet18", size: int = 224) -> Path:
    """A run directory holding an untrained checkpoint (enough to measure serving)."""
    from medclf.io import write_json
    from medclf.models import create_model, save_checkpoint

    net = create_model(model, num_classes=2, input_size=size, label_names=["normal", "pneumonia"])
    out.mkdir(parents=True)
    save_checkpoint(out / "best.pt", net, net.contract, config={}, extra={"cache_size": 256})
    write_json(out / "data_summary.json", {"source": "none (load-test stand-in)", "size": 256,
                                           "label_names": ["normal", "pneumonia"], "split_counts": {}})
    return out


def stand_in_dicom(out: Path) -> Path:
    from medclf.data.synthetic import make_synthetic_rsna

    root = make_synthetic_rsna(out, n_patients=1, size=1024, seed=1)
    return next((root / "stage_2_train_images").glob("*.dcm"))


def rss_mib(pid: int) -> float:
    """Resident set size of a process, MiB (Linux /proc)."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1)) / 1024


def start_server(run: Path, log_path: Path, device: str = "cpu") -> tuple[subprocess.Popen, str]:
    """The server as a child process on a free port (uvicorn picks it: --port 0); returns (process, base URL)."""
    log = open(log_path, "w+")
    proc = subprocess.Popen([sys.executable, "-m", "medclf", "serve", str(run), "--host", HOST, "--port", "0",
                             "--device", device], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        found = re.search(rf"Uvicorn running on http://{re.escape(HOST)}:(\d+)", log_path.read_text())
        if found:
            return proc, f"http://{HOST}:{found.group(1)}"
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    stop_server(proc)
    raise SystemExit(f"server did not start; its log:\n{log_path.read_text()[-2000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def load(base: str, image: Path, n: int, clients: int, pid: int, sample_every: int) -> dict:
    """Exactly `n` requests from `clients` threads, each with its own keep-alive connection."""
    import httpx

    data = image.read_bytes()
    counter = iter(range(n))
    lock = threading.Lock()
    latencies, failures, rss = [], [], []

    def client() -> None:
        with httpx.Client(base_url=base, timeout=120) as http:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                try:
                    r = http.post("/api/predict", files={"files": (image.name, data, "application/dicom")})
                    ok = r.status_code == 200 and r.json()["results"][0]["heatmap"] is not None
                    reason = f"HTTP {r.status_code}" if r.status_code != 200 else "no heatmap"
                except httpx.HTTPError as err:
                    ok, reason = False, type(err).__name__
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    if not ok:
                        failures.append(reason)
                    if len(latencies) % sample_every == 0:
                        rss.append((len(latencies), round(rss_mib(pid), 1)))

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client) for _ in range(clients)]:
            f.result()
    wall = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    return {"requests": len(latencies), "failures": len(failures), "failure_reasons": sorted(set(failures)),
            "wall_s": round(wall, 2), "requests_per_s": round(len(latencies) / wall, 2),
            "latency_ms": {k: round(float(np.percentile(lat, q)), 1) for k, q in
                           (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))},
            "rss_mib": rss}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="run directory to serve (default: a resnet18 224 px stand-in)")
    parser.add_argument("--image", type=Path, help="file to upload (default: a synthetic 1024 px chest DICOM)")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=32)
    parser.add_argument("--device", default="cpu", help="the server's --device (cpu, cuda, ...)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="markdown summary to write ('-': none)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="medclf-load-") as tmp:
        tmp = Path(tmp)
        run = args.run or stand_in_run(tmp / "run")
        image = args.image or stand_in_dicom(tmp / "data")
        proc, base = start_server(run, tmp / "server.log", args.device)
        try:
            warm = load(base, image, args.warmup, args.clients, proc.pid, max(1, args.warmup))
            rss_warm = rss_mib(proc.pid)
            result = load(base, image, args.requests, args.clients, proc.pid, 25)
            rss_end = rss_mib(proc.pid)
        finally:
            stop_server(proc)
    growth = rss_end - rss_warm
    result.update({"warmup_failures": warm["failures"], "rss_after_warmup_mib": round(rss_warm, 1),
                   "rss_end_mib": round(rss_end, 1), "rss_growth_mib": round(growth, 1),
                   "run": str(args.run or "stand-in resnet18 224 px (untrained)"),
                   "image": str(args.image or "synthetic 1024 px JPEG-Baseline DICOM"),
                   "clients": args.clients, "device": args.device, "cpus": os.cpu_count(),
                   "load_average": os.getloadavg()[0],
                   "python": platform.python_version()})
    flat = growth <= max(20.0, 0.05 * rss_warm)
    ok = result["failures"] == 0 and warm["failures"] == 0 and flat
    print(json.dumps(result, indent=2))
    print(f"{'PASS' if ok else 'FAIL'}: {result['requests']} requests, {result['failures']} failed, "
          f"{result['requests_per_s']} req/s, p95 {result['latency_ms']['p95']} ms, RSS "
          f"{rss_warm:.0f} -> {rss_end:.0f} MiB ({'flat' if flat else 'GREW'})")
    if str(args.out) != "-":
        write_summary(args.out, result, ok, argv if argv is not None else sys.argv[1:])
    return 0 if ok else 1


def write_summary(path: Path, r: dict, ok: bool, argv: list[str]) -> None:
    from medclf.io import write_text

    series = ", ".join(f"{n}: {m}" for n, m in r["rss_mib"])
    write_text(path, f"""# `medclf serve` under load

Command: `{' '.join(['python -m benchmarks.load_serve', *argv])}`  ({'PASS' if ok else 'FAIL'})

Served: {r['run']}; each request uploads {r['image']} and gets probability, decision and Grad-CAM heatmap.
{r['requests']} requests from {r['clients']} concurrent clients on 127.0.0.1, one uvicorn worker, model on
`{r['device']}` ({r['cpus']} CPU cores, load average {r['load_average']:.1f} at the end).

| requests/s | p50 ms | p95 ms | p99 ms | max ms | failed |
|---:|---:|---:|---:|---:|---:|
| {r['requests_per_s']} | {r['latency_ms']['p50']} | {r['latency_ms']['p95']} | {r['latency_ms']['p99']} | \
{r['latency_ms']['max']} | {r['failures']} |

Server RSS after warm-up {r['rss_after_warmup_mib']} MiB, at the end {r['rss_end_mib']} MiB
(growth {r['rss_growth_mib']} MiB). Sampled every 25 requests (request count: MiB): {series}.
""")


if __name__ == "__main__":
    sys.exit(main())
