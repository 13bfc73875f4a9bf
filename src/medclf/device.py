"""Device choice and reproducibility."""

from __future__ import annotations

import random

import numpy as np
import torch

from medclf.errors import ConfigError


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but CUDA is not available on this machine")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Every epoch reseeds all RNGs from (seed, epoch): a resumed run draws exactly what an uninterrupted one did.

    Under DDP each rank gets its own stream (different dropout masks and augmentations), still reproducible.
    """
    return seed * 100_003 + epoch + rank * 1_000_000_007


def autocast(device: torch.device, enabled: bool):
    # bf16 needs no loss scaling; on CPU autocast slows small convnets down, so it is CUDA-only here
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")
