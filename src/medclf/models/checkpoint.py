"""Checkpoints that stand alone: weights, how to rebuild the model, its data contract and the config.

Only tensors and plain Python types are stored, so `torch.load(path, weights_only=True)` reads them and loading
a checkpoint never runs pickled code. The model is rebuilt from its registry name and constructor arguments
(`pretrained=False`: no download) and the state dict is loaded strictly.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medclf.contract import DataContract
from medclf.errors import MedclfError
from medclf.io import atomic_path
from medclf.models.wrappers import ClassifierModel

FORMAT = "medclf-checkpoint"
FORMAT_VERSION = 1
_SCALARS = (str, int, float, bool, type(None))
_ANSI_CODES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# the refused global in torch's weights-only message, whatever its wording ("Unsupported global: GLOBAL a.b",
# "Trying to load unsupported GLOBAL a.b whose module a is blocked"): only the dotted name is taken from it
_REFUSED_GLOBAL = re.compile(r"GLOBAL\s+([A-Za-z_][\w.]*)")


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


def refused_global(err: Exception) -> str | None:
    """The pickled callable or class (`posix.system`) that `torch.load(weights_only=True)` refused, or None."""
    if not isinstance(err, pickle.UnpicklingError):
        return None
    found = _REFUSED_GLOBAL.search(_ANSI_CODES.sub("", str(err)))
    return found.group(1) if found else None


def load_refusal(err: Exception) -> str:
    """Why `torch.load(weights_only=True)` failed, in medclf's words, on one line. A refused pickle (any
    `pickle.UnpicklingError`, however torch words it) is described by medclf alone: torch's text advises
    re-loading with `weights_only=False`, i.e. running the code of a file that was just refused for holding
    code. Other failures (truncated, not a zip) give torch's first line, unless it gives that advice too."""
    text = _ANSI_CODES.sub("", str(err)).strip()
    if isinstance(err, pickle.UnpicklingError):
        name = refused_global(err)
        if name:
            return f"it holds pickled code or objects ({name}), not only tensors and plain values"
        return "the weights-only reader refused its contents: damaged, or pickled objects rather than tensors"
    first = " ".join(text.splitlines()[0].split())[:200] if text else ""
    return type(err).__name__ if not first or "weights_only" in first else first


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
    except Exception as e:  # pickled code, truncated/corrupt zip, not a torch file; torch's advice is not passed on
        if refused_global(e):
            raise MedclfError(f"{path}: refused: {load_refusal(e)}, so medclf does not load it (a medclf checkpoint "
                              "holds nothing else)") from None
        raise MedclfError(f"cannot read checkpoint {path}: corrupt or not a weights-only torch file "
                          f"({load_refusal(e)})") from None
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
