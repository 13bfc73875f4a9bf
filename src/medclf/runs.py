"""Open a run directory (single model or ensemble) as one predictor with its data contract."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medclf.errors import MedclfError
from medclf.io import read_json
from medclf.models.contract import DataContract


@dataclass
class LoadedRun:
    run_dir: Path
    model: torch.nn.Module  # a ClassifierModel or an Ensemble: same interface
    contract: DataContract
    image_size: int  # the square size images are brought to before the model's own resize (the cache size)
    name: str
    config: dict
    norm: str = "robust"  # the grey-level normalisation the cache was prepared with (`prepare --norm`)

    def load_image(self, path: str | Path) -> "np.ndarray":
        """One DICOM/PNG/JPEG file as the uint8 `S x S` image the training cache would have held."""
        from medclf.data.imageio import load_image

        return load_image(path, self.image_size, norm=self.norm)


def load_run(run_dir: str | Path, device: torch.device | str = "cpu") -> LoadedRun:
    """Load `best.pt` of a run, or the members of an ensemble run (`ensemble.json`)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MedclfError(f"{run_dir}: not a run directory")
    if (run_dir / "ensemble.json").exists():
        from medclf.ensemble import load_ensemble

        return load_ensemble(run_dir, device)
    return load_single(run_dir / "best.pt", device)


def load_single(checkpoint: Path, device: torch.device | str = "cpu") -> LoadedRun:
    from medclf.models.checkpoint import load_checkpoint

    if not checkpoint.exists():
        raise MedclfError(f"{checkpoint.parent}: no best.pt (train it first, or check the path)")
    model, contract, payload = load_checkpoint(checkpoint, device=device)
    model.eval()
    extra = payload.get("extra") or {}
    return LoadedRun(
        run_dir=checkpoint.parent,
        model=model,
        contract=contract,
        image_size=int(extra.get("cache_size") or contract.input_size),
        name=checkpoint.parent.name,
        config=payload.get("config") or {},
        norm=extra.get("cache_norm") or "robust",
    )


def run_cache_path(run_dir: Path) -> Path | None:
    """The cache a run was trained on, as recorded in its data summary."""
    summary = run_dir / "data_summary.json"
    if summary.exists():
        return Path(read_json(summary)["cache"])
    return None
