"""Checkpoints that stand alone: weights, how to rebuild the model, its data contract and the config.

Only tensors and plain Python types are stored, so `torch.load(path, weights_only=True)` reads them and loading
a checkpoint never runs pickled code. The model is rebuilt from its registry name and constructor arguments
(`pretrained=False`: no download) and the state dict is loaded strictly.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medclf.errors import MedclfError
from medclf.io import atomic_path
from medclf.contract import DataContract
from medclf.models.wrappers import ClassifierModel

FORMAT = "medclf-checkpoint"
FORMAT_VERSION = 1
_SCALARS = (str, int, float, bool, type(None))
_ANSI_CODES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def unwrap_model(model: nn.Module) -> ClassifierModel:
    """The ClassifierModel inside DDP (`.module`), an EMA AveragedModel (`.module`) or torch.compile (`._orig_mod`)."""
    seen = 0
    while not isinstance(model, ClassifierModel) and seen < 4:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            break
        model, seen = inner, seen + 1
    if not isinstance(model, ClassifierModel):
        raise TypeError(f"save_checkpoint needs a medclf ClassifierModel, got {type(model).__name__}")
    return model


def to_plain(obj: Any, where: str) -> Any:
    """A copy of `obj` made of tensors and plain types (Paths become str, numpy values lists/scalars)."""
    if type(obj).__module__ == "numpy":  # numpy scalars (np.float64 is a float subclass) and arrays
        return obj.tolist()
    if isinstance(obj, torch.Tensor) or type(obj) in _SCALARS:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise MedclfError(f"checkpoint: key {k!r} in {where} is a {type(k).__name__}; only str/int keys")
            out[k] = to_plain(v, f"{where}.{k}")
        return out
    if isinstance(obj, (list, tuple)):
        items = [to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise MedclfError(f"checkpoint: {where} is a {type(obj).__name__}, which a weights-only checkpoint cannot hold")


def save_checkpoint(path: str | Path, model: nn.Module, contract: DataContract, config: dict,
                    extra: dict | None = None) -> None:
    """Write `path` atomically: state dict (on CPU), model name and constructor kwargs, contract, config, extra."""
    inner = unwrap_model(model)
    if not inner.build_kwargs:
        raise MedclfError(f"checkpoint {path}: the model was not made by create_model, so it cannot be rebuilt")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_name": inner.model_name,
        "model_kwargs": to_plain(inner.build_kwargs, "model_kwargs"),
        "state_dict": {k: v.detach().cpu() for k, v in inner.state_dict().items()},
        "contract": contract.to_dict(),
        "config": to_plain(config, "config"),
        "extra": to_plain(extra or {}, "extra"),
        "versions": _versions(),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _torch_reason(err: Exception) -> str:
    """One plain line of why torch.load failed: for pickled code, the global it refused (torch's first line
    only says the file "can still be loaded", and is bolded with terminal colour codes)."""
    text = _ANSI_CODES.sub("", str(err)).strip()
    found = re.search(r"WeightsUnpickler error: (Unsupported global: GLOBAL \S+)", text)
    if found:
        return f"pickled code refused: {found.group(1)}"
    return " ".join(text.splitlines()[0].split()) if text else type(err).__name__


def is_medclf_checkpoint(path: str | Path) -> bool:
    """Whether `path` is a checkpoint medclf wrote (its format and data contract), read weights-only and
    memory-mapped (cheap however large); anything unreadable or refused is simply not one."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - any file that torch cannot read weights-only is no proof
        return False
    return isinstance(payload, dict) and payload.get("format") == FORMAT and isinstance(payload.get("contract"), dict)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw payload of a medclf checkpoint (weights-only load), with a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise MedclfError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated/corrupt zip, not a torch file, or pickled code
        first = _torch_reason(e)
        raise MedclfError(f"cannot read checkpoint {path}: corrupt or not a weights-only torch file ({first})") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise MedclfError(f"{path} is not a medclf checkpoint (no 'format': '{FORMAT}'); a plain state dict "
                          f"can start training with model.weights={path}")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise MedclfError(f"{path}: checkpoint format {payload['format_version']} is newer than this medclf "
                          f"reads ({FORMAT_VERSION}); upgrade medclf")
    missing = [k for k in ("model_name", "model_kwargs", "state_dict", "contract") if k not in payload]
    if missing:
        raise MedclfError(f"{path}: medclf checkpoint lacks {missing}")
    return payload


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[ClassifierModel, DataContract, dict]:
    """Rebuild the model (no download) and load its weights strictly.

    Returns (model in eval mode on `device`, contract, payload without the state dict: `config`, `extra`,
    `model_name`, `model_kwargs`, `versions`, ...).
    """
    from medclf.models.registry import create_model

    payload = read_checkpoint(path)
    contract = DataContract.from_dict(payload["contract"])
    model = create_model(payload["model_name"], pretrained=False, weights=None, **payload["model_kwargs"])
    _load_strict(model, payload.pop("state_dict"), Path(path))
    model.contract = contract
    return model.to(device).eval(), contract, payload


def _load_strict(model: ClassifierModel, state: dict[str, torch.Tensor], path: Path) -> None:
    target = model.state_dict()
    unexpected = [k for k in state if k not in target]
    missing = [k for k in target if k not in state]
    misshapen = [k for k in state if k in target and state[k].shape != target[k].shape]
    if unexpected or missing or misshapen:
        parts = [f"{label} {keys[:4]}{' ...' if len(keys) > 4 else ''}" for label, keys in
                 (("unexpected keys", unexpected), ("missing keys", missing), ("shape mismatch", misshapen)) if keys]
        raise MedclfError(
            f"{path}: weights do not match {model.model_name} as rebuilt from the checkpoint: {'; '.join(parts)} "
            f"(extra buffers such as auxiliary BatchNorm from adversarial training must be removed, or the model "
            f"built with them, before loading)")
    model.load_state_dict(state, strict=True)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("medclf", "torch", "torchvision", "timm"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    return out
