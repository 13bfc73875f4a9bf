"""`medclf profile`: what a model costs — parameters, FLOPs, peak memory and speed of training and inference.

Columns (one row per model, a Markdown and a CSV table):
- `params_m`: parameters (millions), `sum(p.numel())`; `weights_mb`: parameters + buffers in memory.
- `gflops_fwd` / `gflops_train`: FLOPs per image of a forward pass / of forward + backward, counted by
  `torch.utils.flop_counter.FlopCounterMode` (a multiply-add is 2 FLOPs; matmul/conv/attention only).
- `train_peak_mb` / `infer_peak_mb`: memory a training step (forward, backward, AdamW step: activations,
  gradients, optimiser state) / an inference batch needs on top of the loaded model and input batch. CUDA:
  `torch.cuda.max_memory_allocated` minus the allocation before the step. CPU: peak RSS minus the RSS before the
  step (Linux: VmHWM, reset through /proc/self/clear_refs; elsewhere `ru_maxrss`). Each measurement runs in a
  fresh subprocess so one model's peak never hides another's.
- `train_img_s` / `infer_img_s`: images/s of timed steps after one warm-up step, with medclf's training
  settings (CUDA: channels_last, bf16 autocast, fused AdamW; CPU: float32).
"""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from medclf.errors import MedclfError
from medclf.outdirs import check_output_file

COLUMNS = ["model", "params_m", "weights_mb", "gflops_fwd", "gflops_train", "train_peak_mb", "infer_peak_mb",
           "train_img_s", "infer_img_s", "batch", "size", "device"]
MB = 1024 * 1024


@dataclass
class ProfileSpec:
    name: str
    size: int = 224
    batch: int = 8
    steps: int = 3
    device: str = "cpu"
    num_classes: int = 2


# ---------------------------------------------------------------- counting


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def weights_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def count_flops(model: nn.Module, x: torch.Tensor, backward: bool = False) -> int:
    """Total FLOPs of `model(x)` (and of its backward when `backward`), as FlopCounterMode counts them.

    Autograd stays on even for the forward count: in no-grad eval mode `nn.MultiheadAttention` (torchvision's
    ViT) takes a fused fast path that FlopCounterMode does not see, which would drop its FLOPs from the count.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=_cpu_attention_formulas())
    with counter:
        out = model(x)
        if backward:
            out.float().sum().backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def _cpu_attention_formulas() -> dict:
    """FLOP formulas for the CPU kernels of scaled_dot_product_attention, which FlopCounterMode's registry
    (CUDA flash/efficient/cudnn kernels) lacks; the formulas are torch's own."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten

    def forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_backward_flop_count(grad_out, query, key, value)

    formulas = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        formulas[aten._scaled_dot_product_flash_attention_for_cpu] = forward
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        formulas[aten._scaled_dot_product_flash_attention_for_cpu_backward] = backward
    return formulas


# ---------------------------------------------------------------- speed and memory of one mode


def build(spec: ProfileSpec) -> nn.Module:
    from medclf.models import create_model

    return create_model(spec.name, num_classes=spec.num_classes, input_size=spec.size)


def measure(model: nn.Module, mode: str, batch: int, size: int, steps: int, device: torch.device,
            in_chans: int = 3, num_classes: int = 2) -> dict:
    """Peak extra memory (bytes) and images/s of `mode` ('train' or 'infer') in this process.

    One warm-up step with a throwaway optimiser pages in kernels and libraries (their code counts in RSS) and is
    then freed; the measured steps start with a fresh optimiser, so its state is part of the training peak.
    """
    model = model.to(device)
    x = torch.randn(batch, in_chans, size, size, device=device)
    y = torch.arange(batch, device=device) % num_classes
    if device.type == "cuda":  # medclf's CUDA training settings
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    model.train(mode == "train")
    _step_fn(model, mode, x, y, device)()
    model.zero_grad(set_to_none=True)
    gc.collect()
    _sync(device)
    base = _memory_reset(device)
    step = _step_fn(model, mode, x, y, device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = time.perf_counter() - start
    return {"peak_bytes": max(0, _memory_peak(device) - base), "img_s": batch * steps / seconds}


def _step_fn(model: nn.Module, mode: str, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> Callable[[], None]:
    """One inference batch, or one training step (forward, backward, AdamW) with medclf's optimiser settings."""
    from medclf.config import TrainConfig
    from medclf.device import autocast
    from medclf.engine.optim import create_optimizer

    if mode == "infer":
        def infer() -> None:
            with torch.no_grad(), autocast(device, True):
                model(x)
        return infer
    optimizer = create_optimizer(model, TrainConfig(), device)

    def train() -> None:
        with autocast(device, True):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return train


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _memory_reset(device: torch.device) -> int:
    """Start a peak measurement; returns the baseline (bytes)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    try:  # Linux: "5" resets the peak RSS (VmHWM, ru_maxrss) to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _current_rss()


def _memory_peak(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:  # Linux: VmHWM is this process's own peak. ru_maxrss also holds the peak of the process that exec'd
        # it (the kernel carries it over at exec), i.e. of the parent that started this measuring subprocess.
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _current_rss() -> int:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # no /proc: the peak so far is the best baseline there is
        return _memory_peak(torch.device("cpu"))


# ---------------------------------------------------------------- one model, one table


def measure_isolated(spec: ProfileSpec, mode: str) -> dict:
    """`measure` of a freshly built model in a subprocess, so its peak memory is its own."""
    payload = json.dumps({"spec": spec.__dict__, "mode": mode})
    code = "import sys; from medclf.profile import _worker; _worker(sys.argv[1])"
    # glibc keeps freed blocks for reuse unless they were mmapped; a fixed mmap threshold returns every large
    # tensor's memory on free, so RSS follows live memory and the peak is the step's own.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    proc = subprocess.run([sys.executable, "-c", code, payload], capture_output=True, text=True, env=env)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise MedclfError(f"profile {spec.name} ({mode}): the measuring process failed: {tail}")
    return json.loads(lines[-1])


def _worker(payload: str) -> None:
    request = json.loads(payload)
    spec = ProfileSpec(**request["spec"])
    torch.manual_seed(0)
    result = measure(build(spec), request["mode"], spec.batch, spec.size, spec.steps, torch.device(spec.device),
                     num_classes=spec.num_classes)
    print(json.dumps(result))


def profile_model(spec: ProfileSpec, isolate: bool = True) -> dict:
    """One table row for a registry model name (e.g. resnet50, vit_b_16, timm:vit_small_patch16_224)."""
    model = build(spec)
    in_chans = model.contract.in_chans
    two = torch.randn(2, in_chans, spec.size, spec.size)  # 2: BatchNorm refuses one value per channel in training
    row = {
        "model": spec.name,
        "params_m": count_params(model) / 1e6,
        "weights_mb": weights_bytes(model) / MB,
        "gflops_fwd": count_flops(model.eval(), two) / 2e9,
        "gflops_train": count_flops(model.train(), two, backward=True) / 2e9,
    }
    del model
    run: Callable[[str], dict] = (lambda mode: measure_isolated(spec, mode)) if isolate else \
        (lambda mode: measure(build(spec), mode, spec.batch, spec.size, spec.steps, torch.device(spec.device)))
    train, infer = run("train"), run("infer")
    row.update({"train_peak_mb": train["peak_bytes"] / MB, "infer_peak_mb": infer["peak_bytes"] / MB,
                "train_img_s": train["img_s"], "infer_img_s": infer["img_s"], "batch": spec.batch,
                "size": spec.size, "device": device_label(torch.device(spec.device))})
    return row


def profile_models(names: list[str], size: int = 224, batch: int = 8, steps: int = 3, device: str = "auto",
                   out: str | Path | None = None, isolate: bool = True, progress: bool = True, force: bool = False):
    """Profile each model; returns the table (a DataFrame) and writes `out` as .md and .csv when given
    (existing files replaced only with `force`)."""
    import pandas as pd
    from tqdm import tqdm

    from medclf.device import pick_device
    from medclf.models.registry import TIMM_PREFIX, list_models

    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise MedclfError("--models: give at least one model name (e.g. resnet50,vit_b_16)")
    unknown = [n for n in names if n not in list_models() and not n.startswith(TIMM_PREFIX)]
    if unknown:
        raise MedclfError(f"--models: unknown {', '.join(unknown)} (valid: {', '.join(list_models())}, "
                          f"or timm:<name>)")
    if batch < 1 or steps < 1 or size < 16:
        raise MedclfError(f"--batch and --steps must be >= 1 and --size >= 16 (got {batch}, {steps}, {size})")
    if out is not None:
        for path in table_files(out):
            check_output_file(path, force)
    dev = pick_device(device)
    if dev.type not in ("cpu", "cuda"):
        dev = torch.device("cpu")  # peak memory is measured on CUDA or the CPU only
    rows = [profile_model(ProfileSpec(n, size, batch, steps, dev.type), isolate=isolate)
            for n in tqdm(names, desc="profile", disable=not progress)]
    table = pd.DataFrame(rows, columns=COLUMNS)
    if out is not None:
        write_table(table, out)
    return table


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"cpu ({cores} cores, {torch.get_num_threads()} threads)"


def to_markdown(table) -> str:
    fmt = {"params_m": "{:.2f}", "weights_mb": "{:.0f}", "gflops_fwd": "{:.2f}", "gflops_train": "{:.2f}",
           "train_peak_mb": "{:.0f}", "infer_peak_mb": "{:.0f}", "train_img_s": "{:.2f}", "infer_img_s": "{:.2f}"}
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(fmt.get(c, "{}").format(row[c]) for c in table.columns) + " |")
    return "\n".join(lines) + "\n"


def table_files(out: str | Path) -> tuple[Path, Path]:
    """The files `write_table` writes for `out`: its `.md` and `.csv`."""
    return Path(out).with_suffix(".md"), Path(out).with_suffix(".csv")


def write_table(table, out: str | Path) -> tuple[Path, Path]:
    """`out` with .md and .csv suffixes (whatever suffix `out` has)."""
    from medclf.io import atomic_path, write_text

    md, csv = table_files(out)
    write_text(md, to_markdown(table))
    with atomic_path(csv) as tmp:
        table.to_csv(tmp, index=False)
    return md, csv
