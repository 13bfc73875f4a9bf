"""DistributedDataParallel plumbing, kept out of the training loop (DESIGN habit 6).

One process is the degenerate case of everything here: with `world_size == 1` every helper is a no-op or an
identity, so the loop reads the same with and without `torchrun`.

- `init_distributed` joins the process group that `torchrun` describes in the environment (`WORLD_SIZE`,
  `RANK`, `LOCAL_RANK`, `MASTER_ADDR/PORT`), or uses one the caller already initialised (an ensemble training
  several members, a test spawning workers). It never tears a group down: the group it creates lives until the
  process exits (or until the `distributed()` context manager that created it closes), so repeated `train()`
  calls in one process share it.
- NCCL on CUDA, gloo on CPU. Each process drives `cuda:LOCAL_RANK`.
- Only global rank 0 touches the run directory; `run_on_main` runs such work there and hands its result (or its
  error) to every rank, so no rank waits forever on one that failed.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from medclf.device import pick_device
from medclf.errors import ConfigError, MedclfError

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its global rank, the number of processes and the device it drives."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_world_size() -> int:
    """The number of processes torchrun started (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """True on global rank 0 and on a single process: the one process that writes files."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def init_distributed(device: str = "auto") -> DistContext:
    """Join (or create, under torchrun) the default process group; a single-process context otherwise."""
    if not (dist.is_available() and dist.is_initialized()) and env_world_size() <= 1:
        return DistContext(device=pick_device(device))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device)
    if dev.type == "cuda":
        index = local_rank if "LOCAL_RANK" in os.environ or not dist.is_initialized() else torch.cuda.current_device()
        dev = torch.device("cuda", index)
        torch.cuda.set_device(dev)  # NCCL and all_gather_object use the current device
    elif dev.type != "cpu":
        raise ConfigError(f"train.device={device}: distributed training runs on CUDA (NCCL) or CPU (gloo), "
                          f"not {dev.type}")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        atexit.register(_destroy)  # train() may run several times (ensemble members) on the same group
    if dist.get_backend() == "nccl" and dev.type != "cuda":
        raise ConfigError("the process group uses NCCL, which needs CUDA; set train.device=cuda or use gloo")
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=dev)


def _destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed(device: str = "auto") -> Iterator[DistContext]:
    """`with distributed() as ctx:` joins the group and destroys it on exit, if this call created it."""
    created = env_world_size() > 1 and not (dist.is_available() and dist.is_initialized())
    try:
        yield init_distributed(device)
    finally:
        if created:
            _destroy()


def run_on_main(fn: Callable[[], T], ctx: DistContext) -> T:
    """Run `fn` on rank 0 only and return its result on every rank; an error there is raised on every rank."""
    if not ctx.enabled:
        return fn()
    result, error = None, None
    if ctx.is_main:
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 - handed to the other ranks, then re-raised here below
            error = err
    box = [(result, error if isinstance(error, MedclfError) else (None if error is None else repr(error)))]
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    result, remote = box[0]
    if isinstance(remote, MedclfError):
        raise remote
    if remote is not None:
        raise MedclfError(f"rank 0 failed: {remote}")
    return result  # type: ignore[return-value]


def all_gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """One picklable object per rank, in rank order (variable sizes allowed: torch pads the pickles)."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def all_gather_arrays(array: np.ndarray, ctx: DistContext) -> list[np.ndarray]:
    """Each rank's array, in rank order; lengths may differ between ranks."""
    return all_gather_objects(np.ascontiguousarray(array), ctx)


def shard_positions(n: int, ctx: DistContext) -> np.ndarray:
    """The positions 0..n-1 this rank handles at evaluation: every `world_size`-th, no padding."""
    return np.arange(ctx.rank, n, ctx.world_size, dtype=np.int64)


def gather_by_position(positions: np.ndarray, values: np.ndarray, n: int, ctx: DistContext) -> np.ndarray:
    """Reassemble per-rank `values[i]` (for dataset position `positions[i]`) into one `n x ...` array on every rank.

    A position sent twice (a sampler that pads by wrapping around) is kept once; a missing one is a bug.
    """
    all_positions = all_gather_arrays(np.asarray(positions, dtype=np.int64), ctx)
    all_values = all_gather_arrays(np.asarray(values), ctx)
    out = np.zeros((n,) + np.asarray(values).shape[1:], dtype=np.asarray(values).dtype)
    seen = np.zeros(n, dtype=bool)
    for pos, val in zip(all_positions, all_values):
        fresh = ~seen[pos]
        out[pos[fresh]] = val[fresh]
        seen[pos] = True
    if not seen.all():
        raise RuntimeError(f"gather_by_position: {int((~seen).sum())} of {n} positions came from no rank")
    return out


def all_reduce_sum(values: Sequence[float], ctx: DistContext) -> list[float]:
    """Sums over ranks (float64, on the rank's device as NCCL requires)."""
    if not ctx.enabled:
        return [float(v) for v in values]
    t = torch.tensor(list(values), dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_buffers(module: torch.nn.Module, ctx: DistContext) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics drift apart with each rank's last batch)."""
    if not ctx.enabled:
        return
    for buf in module.buffers():
        # NCCL sends only tensors on the rank's GPU; a stray CPU buffer travels through a device copy
        moved = buf if buf.device == ctx.device else buf.to(ctx.device)
        dist.broadcast(moved, src=0)
        if moved is not buf:
            buf.copy_(moved)


def check_same_cache(content_hash: str | None, ctx: DistContext) -> None:
    """Each node may hold its own copy of the cache; all ranks must read the same content."""
    hashes = all_gather_objects(content_hash, ctx)
    if len(set(hashes)) > 1:
        raise MedclfError(f"--data: the ranks read different caches (content_hash per rank: {hashes}); "
                          "copy the same prepared cache to every node")


def wrap_model(model: torch.nn.Module, ctx: DistContext, sync_bn: bool = False) -> torch.nn.Module:
    """The module the loop trains through: DistributedDataParallel under torchrun, `model` itself otherwise.

    SyncBatchNorm replaces the BatchNorm modules in place and keeps their Parameter objects, so an optimiser built
    before still holds the right tensors and checkpoint keys are unchanged.
    """
    if not ctx.enabled:
        return model
    if sync_bn:
        if ctx.device.type != "cuda":
            raise ConfigError("train.sync_bn=true needs CUDA: torch's SyncBatchNorm does not run on CPU")
        # converts the BatchNorm children in place and returns `model` itself, whose identity (and `.contract`)
        # the rest of the code holds on to
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def check_gpus(nproc: int, device: str) -> None:
    """`--gpus N` needs N CUDA devices here, unless train.device=cpu asks for N CPU processes."""
    if device == "cpu":
        return
    if device not in ("auto", "cuda"):
        raise ConfigError(f"--gpus {nproc} with train.device={device}: use cuda (one process per GPU) or cpu")
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if available < nproc:
        raise ConfigError(f"--gpus {nproc}: this machine has {available} CUDA GPU(s) "
                          "(train.device=cpu runs that many CPU processes instead)")


def launch(nproc: int, args: Sequence[str]) -> int:
    """Run `medclf <args>` in `nproc` processes on this machine through `python -m torch.distributed.run`.

    A subprocess (not `torch.distributed.run`'s Python API) so the workers start clean, exactly as when the user
    types the torchrun command; returns its exit status.
    """
    if env_world_size() > 1:
        raise ConfigError("--gpus starts torchrun itself; drop it when already running under torchrun")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "medclf", *args]
    return subprocess.call(cmd)
