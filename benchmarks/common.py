"""What the benchmarks share: the machine description, the sample data, a cache prepared from it, result files."""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = (REPO / ".." / "shared" / "data" / "rsna-sample").resolve()
RESULTS = REPO / "benchmarks" / "results"


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """'cpu (<model>, N cores)' or 'cuda (<GPU name>)' — every result names the device it was measured on."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({cpu_model()}, {usable_cores()} cores, torch threads {torch.get_num_threads()})"


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    load = f"; load average {os.getloadavg()[0]:.1f} when measured" if hasattr(os, "getloadavg") else ""
    return (f"{cpu_model()}; {usable_cores()} usable cores (os.cpu_count()={os.cpu_count()}){load}; GPU: {gpu}; "
            f"torch {torch.__version__}; python {platform.python_version()}; {platform.platform()}")


def pick_bench_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def data_available(data: Path) -> bool:
    return (data / "stage_2_train_images").is_dir() and (data / "stage_2_train_labels.csv").is_file()


def parser(doc: str) -> argparse.ArgumentParser:
    """The options every benchmark has: `--data` (an RSNA-layout folder) and `--out` (default: its results file)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="RSNA-layout folder")
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write (default: benchmarks/results/)")
    return parser


def skipped_without_data(data: Path, name: str) -> bool:
    """True (after saying so) when `data` is not an RSNA-layout folder: benchmarks skip rather than fail."""
    if data_available(data):
        return False
    print(f"{name} benchmark skipped: {data} not found")
    return True


def prepare_sample_cache(data: Path, out: Path, size: int = 256) -> Path:
    """The sample DICOMs prepared into a medclf cache (what `medclf prepare rsna --size 256` writes)."""
    from medclf.data.prepare import prepare_rsna

    return prepare_rsna(data / "stage_2_train_images", data / "stage_2_train_labels.csv", out, size=size,
                        progress=False)


def cache_files(cache) -> tuple[list[Path], list[int]]:
    """The source DICOM of every cache row and its label, in cache order (both pipelines read the same images)."""
    source = Path(cache.meta["params"]["images"])
    ids = cache.manifest["id"].astype(str).tolist()
    return [source / f"{i}.dcm" for i in ids], cache.manifest["label"].astype(int).tolist()


def run_for(fn: Callable[[], int], min_seconds: float, device: torch.device,
            max_rounds: int = 1000) -> tuple[int, float]:
    """Call `fn` (returns images processed) until `min_seconds` have passed; returns (images, seconds)."""
    n, start = 0, time.perf_counter()
    for _ in range(max_rounds):
        n += fn()
        sync(device)
        if time.perf_counter() - start >= min_seconds:
            break
    return n, time.perf_counter() - start


def write_result(name: str, lines: list[str], out: Path | None = None) -> Path:
    from medclf.io import write_text

    path = out or RESULTS / f"{name}.md"
    text = "\n".join(lines).rstrip() + "\n"
    print(text)
    write_text(path, text)
    return path


def md_table(header: list[str], rows: list[list]) -> list[str]:
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
