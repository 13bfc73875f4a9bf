"""`make bench`: run every benchmarks/bench_*.py's `main()` and summarise their ratios.

Each benchmark writes its own benchmarks/results/<name>.md (machine description, device, table, ratio, command);
this writes benchmarks/results/summary.md: the machine, every ratio line, and each benchmark's wall time.
A failing benchmark is reported and the others still run; the exit status is then 1.

    python -m benchmarks.run_all [--only loader,inference]
"""

from __future__ import annotations

import argparse
import importlib
import time
import traceback
from pathlib import Path

import torch

from benchmarks import common

BENCH_DIR = Path(__file__).resolve().parent
# results file each benchmark writes, where it differs from its module name
RESULT_NAMES = {"bench_train_step": "train_step"}


def discover() -> list[str]:
    return sorted(p.stem for p in BENCH_DIR.glob("bench_*.py"))


def result_file(module: str) -> Path:
    return common.RESULTS / f"{RESULT_NAMES.get(module, module.removeprefix('bench_'))}.md"


def ratio_lines(path: Path, since: float) -> list[str]:
    """The ratio lines of a results file written after `since` (a skipped benchmark leaves an old file)."""
    if not path.is_file() or path.stat().st_mtime < since:
        return []
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.lower().startswith("ratio")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated names (e.g. loader,inference)")
    args = parser.parse_args(argv)
    modules = discover()
    if args.only:
        wanted = {f"bench_{n.strip().removeprefix('bench_')}" for n in args.only.split(",") if n.strip()}
        modules = [m for m in modules if m in wanted]
    summary = ["# benchmark summary (`make bench`)", "", f"machine: {common.machine()}", ""]
    failed = []
    start_all = time.perf_counter()
    threads = torch.get_num_threads()
    for name in modules:
        print(f"\n=== {name} ===", flush=True)
        torch.set_num_threads(threads)  # every benchmark starts from the same settings, whatever the last did
        start = time.perf_counter()
        try:
            code = importlib.import_module(f"benchmarks.{name}").main([])
        except Exception:  # one broken benchmark must not hide the others' numbers
            traceback.print_exc()
            code = 1
        seconds = time.perf_counter() - start
        status = "ok" if code == 0 else f"FAILED (exit {code})"
        if code != 0:
            failed.append(name)
        summary.append(f"## {name}: {status}, {seconds:.0f} s — results/{result_file(name).name}")
        ratios = ratio_lines(result_file(name), time.time() - seconds - 1) or ["(no result written this run)"]
        summary += [""] + ratios + [""]
    summary.append(f"total: {time.perf_counter() - start_all:.0f} s")
    common.write_result("summary", summary)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
