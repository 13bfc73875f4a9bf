"""Open a run directory (single model or ensemble) as one `Run`: model, data contract, typed config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from medclf.config import Config
from medclf.contract import DataContract
from medclf.errors import DataError, MedclfError
from medclf.models.ensemble import is_ensemble
from medclf.runs.freshness import check_finished
from medclf.runs.layout import RunDir, config_from_stored

if TYPE_CHECKING:
    from medclf.data.cache import Cache
    from medclf.runs.predictor import Predictor


@dataclass
class Run:
    """A trained run, ready to predict. `model` is a ClassifierModel or an Ensemble (same interface)."""

    dir: RunDir
    model: torch.nn.Module
    contract: DataContract
    image_size: int  # the square size images are brought to before the model's own resize (the cache size)
    config: Config
    norm: str = "robust"  # the grey-level normalisation the cache was prepared with (`prepare --norm`)

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def run_dir(self) -> Path:
        return self.dir.path

    @property
    def is_ensemble(self) -> bool:
        return is_ensemble(self.model)

    @property
    def member_contracts(self) -> list[DataContract]:
        return list(getattr(self.model, "member_contracts", None) or [self.contract])

    def load_image(self, path: str | Path) -> np.ndarray:
        """One DICOM/PNG/JPEG file as the uint8 `S x S` image the training cache would have held."""
        from medclf.data.imageio import load_image

        return load_image(path, self.image_size, norm=self.norm)

    def predictor(self, engine: str = "torch", tta_flip: bool | None = None, **kw) -> Predictor:
        """The run's Predictor (`tta_flip` defaults to the run's `eval.tta_flip`, which chose its threshold)."""
        from medclf.runs.predictor import Predictor

        return Predictor.from_run(self, engine=engine, tta_flip=tta_flip, **kw)


def open_run(run_dir: str | Path, device: torch.device | str = "cpu") -> Run:
    """Load `best.pt` of a run, or the members of an ensemble run (`ensemble.json`); a run whose training is
    unfinished is refused with the command that finishes it (medclf.runs.freshness)."""
    rd = RunDir(run_dir)
    if not rd.exists():
        raise MedclfError(f"{rd.path}: not a run directory")
    if rd.is_ensemble:
        return _open_ensemble(rd, device)
    check_finished(rd.path)  # best.pt of an unfinished run has no validated threshold and no OOD detector
    return open_checkpoint(rd.best, device)


def open_checkpoint(checkpoint: str | Path, device: torch.device | str = "cpu") -> Run:
    """One checkpoint (a run's best.pt or last.pt) as a Run; its config comes from the checkpoint itself."""
    from medclf.models.checkpoint import load_checkpoint

    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise MedclfError(f"{checkpoint.parent}: no {checkpoint.name} (train it first, or check the path)")
    model, contract, payload = load_checkpoint(checkpoint, device=device)
    model.eval()
    extra = payload.get("extra") or {}
    return Run(dir=RunDir(checkpoint.parent), model=model, contract=contract,
               image_size=int(extra.get("cache_size") or contract.input_size),
               config=config_from_stored(payload.get("config") or {}), norm=extra.get("cache_norm") or "robust")


def _open_ensemble(rd: RunDir, device: torch.device | str) -> Run:
    from medclf.models.ensemble import Ensemble, ensemble_contract

    spec = rd.ensemble_spec()
    runs = [open_checkpoint(rd.member(m).best, device) for m in spec["members"]]
    names = {tuple(r.contract.label_names) for r in runs}
    if len(names) > 1:
        raise MedclfError(f"{rd.ensemble_path}: members have different label names {sorted(names)}")
    name = f"ensemble[{spec['combine']}]({','.join(r.contract.model_name for r in runs)})"
    contract = ensemble_contract(runs[0].contract, spec["threshold"], name, spec)
    model = Ensemble([r.model for r in runs], [r.contract for r in runs], contract, spec["combine"], spec["weights"])
    model.to(device).eval()
    config = rd.config() if rd.config_path.is_file() else runs[0].config
    return Run(dir=rd, model=model, contract=contract, image_size=runs[0].image_size, config=config,
               norm=runs[0].norm)


def open_run_and_cache(run_dir: str | Path, data: str | Path | None,
                       device: torch.device | str) -> tuple[Run, Cache]:
    """A run and the cache to run it on: its own (from data_summary.json) unless `data` names another."""
    from medclf.data.cache import Cache

    run = open_run(run_dir, device)
    cache_path = Path(data) if data else run.dir.cache_path()
    if cache_path is None:
        raise MedclfError(f"{run.run_dir}: no {RunDir.DATA_SUMMARY} naming its cache; pass --data CACHE")
    cache = Cache.open(cache_path)
    check_labels(cache, run.contract.label_names)
    return run, cache


def check_labels(cache: Cache, label_names: list[str]) -> None:
    if list(cache.label_names) != list(label_names):
        raise DataError(f"{cache.path}: labels {list(cache.label_names)} differ from the model's {list(label_names)}")
