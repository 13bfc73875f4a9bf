"""Loading weights: the libraries' ImageNet weights (`pretrained=True`) and local files (`weights=PATH`).

Pretrained weights come from the usual caches (torch hub for torchvision, the Hugging Face cache for timm) or,
when the network answers, are downloaded into them. When neither works the model is never silently left at
random init: a MedclfError says which weights, where they were looked for and how to provide them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import torch

from medclf.errors import MedclfError
from medclf.models.wrappers import ClassifierModel

log = logging.getLogger("medclf.models")

PROBE_TIMEOUT_S = 3.0  # an unreachable network fails the check in seconds instead of hanging a download
DOWNLOAD_TIMEOUT_S = 60.0
_PROVIDE = "or set model.weights=PATH to a local weights file (or model.pretrained=false to train from random init)"


# --- network -------------------------------------------------------------------------------------------------
def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def offline(hf: bool = False) -> bool:
    """MEDCLF_OFFLINE=1 forbids downloads; HF_HUB_OFFLINE=1 forbids them from the Hugging Face Hub."""
    return _env_true("MEDCLF_OFFLINE") or (hf and _env_true("HF_HUB_OFFLINE"))


def reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Can a TCP connection to the url's host (or the HTTPS proxy) be opened within `timeout` seconds?

    Runs in a thread because name resolution has no timeout of its own.
    """
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    target = urlparse(proxy if proxy else url)
    host, port = target.hostname, target.port or (443 if target.scheme == "https" else 80)
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            ok.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(ok and ok[0])


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    # torch.hub's urllib download has no timeout argument; a stalled connection would hang training forever.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _unavailable(what: str, reason: str, looked: list[str], how: str) -> MedclfError:
    return MedclfError(f"pretrained weights for {what} could not be loaded: {reason}; looked in "
                       f"{', '.join(looked)}; to provide them, {how}, {_PROVIDE}")


# --- torchvision ---------------------------------------------------------------------------------------------
def torchvision_imagenet_state(name: str) -> dict[str, torch.Tensor]:
    """The state dict of torchvision's default ImageNet weights for `name` (1000-class head)."""
    import torchvision.models as tvm

    weights = tvm.get_model_weights(name).DEFAULT
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    file = cache / Path(urlparse(weights.url).path).name
    what = f"'{name}' (torchvision {weights})"
    if not file.exists():
        how = f"download {weights.url} to {file}"
        if offline():
            raise _unavailable(what, "not in the cache and MEDCLF_OFFLINE is set", [str(file)], how)
        if not reachable(weights.url):
            raise _unavailable(what, f"not in the cache and {urlparse(weights.url).hostname} is unreachable",
                               [str(file)], how)
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            # Building through torchvision applies its per-model fixes (e.g. DenseNet's old key names).
            return tvm.get_model(name, weights=weights).state_dict()
    except Exception as e:  # a failed download or a corrupt cached file
        raise MedclfError(f"pretrained weights for {what} could not be loaded from {file} ({e}); delete the file "
                          f"and retry, {_PROVIDE}") from e


# --- timm ----------------------------------------------------------------------------------------------------
def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (huggingface_hub reads it once at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def timm_pretrained_file(timm_name: str) -> str:
    """A local file holding timm's pretrained weights for `timm_name`, downloading it if needed and possible."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(timm_name)
    what = f"'timm:{timm_name}'"
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise MedclfError(f"timm has no pretrained weights for {what}; {_PROVIDE}")
    looked: list[str] = []
    repo, filenames, revision = "", [], None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, rev = cfg.hf_hub_id.partition("@")
        revision = rev or None
        filenames = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        cache = hf_cache_dir()
        for filename in filenames:
            hit = try_to_load_from_cache(repo, filename, cache_dir=cache, revision=revision)
            if isinstance(hit, str):
                return hit
        looked.append(str(cache / f"models--{repo.replace('/', '--')}"))
    url_file = None
    if cfg.url and not cfg.custom_load:
        url_file = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name
        if url_file.exists():
            return str(url_file)
        looked.append(str(url_file))
    if repo:
        also = f", or download {cfg.url} to {url_file}" if url_file is not None else ""
        return _hf_download(what, repo, filenames, revision, looked, also)
    if url_file is not None:
        return _url_download(what, cfg.url, url_file, looked)
    raise _unavailable(what, "timm only has them in a custom format (.npz)", looked or ["-"],
                       "pick a timm tag with Hugging Face weights")


def _hf_download(what: str, repo: str, filenames: list[str], revision: str | None, looked: list[str],
                 also: str = "") -> str:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    how = (f"run `huggingface-cli download {repo}` on a connected machine and copy its cache to "
           f"{hf_cache_dir()} (HF_HOME/HF_HUB_CACHE select another){also}")
    if offline(hf=True):
        raise _unavailable(what, "not in the cache and HF_HUB_OFFLINE/MEDCLF_OFFLINE is set", looked, how)
    if not reachable("https://huggingface.co"):
        raise _unavailable(what, "not in the cache and huggingface.co is unreachable", looked, how)
    for filename in filenames:
        try:
            return hf_hub_download(repo, filename, revision=revision, cache_dir=hf_cache_dir())
        except EntryNotFoundError:
            continue  # older repos have pytorch_model.bin only
        except Exception as e:  # network or hub error
            raise _unavailable(what, f"download from huggingface.co/{repo} failed ({e})", looked, how) from e
    raise _unavailable(what, f"huggingface.co/{repo} has none of {filenames}", looked, how)


def _url_download(what: str, url: str, file: Path, looked: list[str]) -> str:
    how = f"download {url} to {file}"
    if offline():
        raise _unavailable(what, "not in the cache and MEDCLF_OFFLINE is set", looked, how)
    if not reachable(url):
        raise _unavailable(what, f"not in the cache and {urlparse(url).hostname} is unreachable", looked, how)
    file.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            torch.hub.download_url_to_file(url, str(file), progress=True)
    except Exception as e:
        raise _unavailable(what, f"download failed ({e})", looked, how) from e
    return str(file)


# --- local files ---------------------------------------------------------------------------------------------
def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A library-format state dict from a .pth/.pt/.bin/.safetensors file or a medclf checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise MedclfError(f"model.weights: file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - safetensors and torch raise many kinds; each is one line here
        from medclf.models.checkpoint import load_refusal

        raise MedclfError(f"model.weights: cannot read {path} as a weights file ({load_refusal(e)})") from None
    if isinstance(obj, dict) and obj.get("format") == "medclf-checkpoint":
        obj = obj["state_dict"]
    else:
        for key in ("state_dict", "model_state_dict", "model", "state_dict_ema"):
            if isinstance(obj, dict) and isinstance(obj.get(key), dict):
                obj = obj[key]  # common training-script layouts wrap the state dict
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise MedclfError(f"model.weights: {path} holds no state dict (a mapping of names to tensors)")
    return dict(obj)


def _strip_prefixes(state: dict[str, torch.Tensor], target_keys: set[str]) -> dict[str, torch.Tensor]:
    # DDP ("module."), torch.compile ("_orig_mod.") and medclf's own wrapper ("model.") prefix the library keys.
    for prefix in ("module.", "_orig_mod.", "model."):
        if not (set(state) & target_keys) and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _fit_in_chans(model: ClassifierModel, state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    key = f"{model.first_conv}.weight"
    if not model.first_conv or key not in state:
        return state
    have, want = state[key].shape[1], model.input_channels()
    if have == 3 and want == 1:
        state = dict(state)
        state[key] = state[key].sum(dim=1, keepdim=True)  # the same summing as create_model(in_chans=1)
    elif have != want:
        raise MedclfError(f"{source}: its first layer takes {have} channel(s) but the model takes {want}; "
                          f"set model.in_chans={have}")
    return state


def load_state_into(model: ClassifierModel, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Load a library-format state dict into `model.model`; returns the classifier keys that were dropped.

    Only the classifier head may differ (another number of classes): those keys are dropped, reported and
    the head keeps its initialisation. Any other missing, extra or misshapen key is an error.
    """
    target = model.model.state_dict()
    state = _strip_prefixes(state, set(target))
    state = _fit_in_chans(model, model.adapt_state_dict(state), source)
    heads = tuple(f"{h}." for h in model.head_names)
    fits = {k: v for k, v in state.items() if k in target and v.shape == target[k].shape}
    dropped = sorted(k for k in state if k not in fits and k.startswith(heads))
    misshapen = [f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}"
                 for k in state if k in target and k not in fits and not k.startswith(heads)]
    unexpected = [k for k in state if k not in target and not k.startswith(heads)]
    missing = [k for k in target if k not in state and not k.startswith(heads)
               and not k.endswith("num_batches_tracked")]
    problems = [f"{label} {keys[:4]}{' ...' if len(keys) > 4 else ''}"
                for label, keys in (("shape mismatch", misshapen), ("unexpected keys", unexpected),
                                    ("missing keys", missing)) if keys]
    if problems:
        raise MedclfError(f"{source} does not fit {model.model_name}: {'; '.join(problems)}")
    model.model.load_state_dict(fits, strict=False)
    if dropped:
        log.warning("%s: classifier %s does not fit %s's head; dropped, the head keeps its initialisation",
                    source, dropped, model.model_name)
    return dropped


def load_weights(model: ClassifierModel, path: str | Path) -> list[str]:
    """`weights=PATH`: load a torchvision/timm state dict or a medclf checkpoint; returns dropped head keys."""
    return load_state_into(model, read_state_dict(path), source=str(path))
