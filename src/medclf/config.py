"""Configuration in three layers: typed defaults here, a YAML preset, dotted `key=value` overrides.

Unknown keys and wrong types are errors (ConfigError), so a typo never silently trains the wrong thing.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medclf.errors import ConfigError, did_you_mean


@dataclass
class ModelConfig:
    name: str = "resnet18"
    pretrained: bool = False
    weights: str | None = None  # local file: backbone state_dict or a medclf checkpoint
    in_chans: int = 3  # 3: grey replicated to RGB; 1: first layer adapted by summing the pretrained filters
    input_size: int = 224
    drop_rate: float = 0.0


@dataclass
class DataConfig:
    batch_size: int = 32
    workers: int = 0  # DataLoader workers; the memmapped cache is cheap to read, 0 is often fastest on CPU
    sampler: str = "shuffle"  # shuffle | balanced
    epoch_samples: int | None = None  # epoch length for the balanced sampler (default: size of the train split)
    flip: bool = True  # the seed deck's random horizontal flip
    affine: bool = False  # mild random rotation/scale/translation
    contrast: bool = False  # mild brightness/contrast jitter


@dataclass
class LossConfig:
    name: str = "ce"  # see medclf.losses.list_losses()
    gamma: float = 2.0  # focal
    alpha: float | None = None  # focal: weight of the positive class
    label_smoothing: float = 0.0  # ce
    class_balanced: bool = False  # weights by the effective number of samples (Cui et al. 2019)
    beta: float = 0.999
    pos_weight: bool = False  # multilabel ce/focal: each label's positives weighted by its negatives/positives
    gamma_neg: float = 4.0  # asl (multilabel): focusing of the negatives
    gamma_pos: float = 0.0  # asl: focusing of the positives
    clip: float = 0.05  # asl: probability margin shifted off the negatives


@dataclass
class TrainConfig:
    epochs: int = 10
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 0.05
    momentum: float = 0.9  # sgd
    layer_decay: float | None = None  # layer-wise lr decay (ViT fine-tuning recipe)
    schedule: str = "cosine"  # cosine | step | constant
    warmup_epochs: float = 0.0
    step_size: int = 10  # step schedule: epochs between decays
    step_gamma: float = 0.1
    clip_grad: float | None = 1.0
    early_stop_metric: str = "val_auc"  # any history column; higher is better except *_loss
    patience: int | None = None  # epochs without improvement before stopping (None: never)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | mps
    amp: bool = True  # bf16 autocast on CUDA (ignored elsewhere)
    channels_last: bool = True
    compile: bool = False  # torch.compile the model
    sync_bn: bool = False  # under torchrun on CUDA: SyncBatchNorm (batch statistics over all ranks)
    ema: float | None = None  # exponential moving average of weights (decay), evaluated and saved as best
    max_steps_per_epoch: int | None = None  # cap for smoke tests
    adversarial: str | None = None  # fgsm | pgd | advprop
    adv_eps: float = 1.0 / 255.0  # in [0,1] grey levels of the original image
    adv_steps: int = 3
    contrastive: str | None = None  # supcon
    contrastive_epochs: int = 5
    contrastive_temperature: float = 0.1
    contrastive_probe: str = "finetune"  # finetune | linear


@dataclass
class EvalConfig:
    threshold: str = "f1"  # f1 | youden | sensitivity
    target_sensitivity: float = 0.9
    # positives AND negatives validation needs for a fitted threshold; with fewer the run keeps 0.5 and says why
    threshold_min_class: int = 10
    n_boot: int = 1000
    batch_size: int = 64
    tta_flip: bool = False  # average the prediction on the image and its mirror
    ood_detector: bool = True  # fit the Mahalanobis OOD detector on the training split when training ends
    ood_fit_max: int = 5000  # training images it is fitted on at most (seeded draw)
    # temperature scaling fitted on validation when training ends (medclf.engine.calibrate): temperature | none.
    # On by default: T is the minimiser of validation log-loss with T = 1 among the candidates, so it never raises
    # it, and it never changes a ranking or an argmax (ROC AUC and the class called stay the same)
    calibrate: str = "temperature"
    # split-conformal refer band fitted on validation: the error rate alpha (e.g. 0.1); None = no band
    conformal_alpha: float | None = None
    conformal_score: str = "lac"  # lac | aps (single-label tasks; multilabel always uses lac per label)


@dataclass
class TrackConfig:
    tensorboard: bool = True  # event files in RUN/tensorboard (tensorboard --logdir RUN)
    mlflow: bool = False  # also log to MLflow
    mlflow_uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else sqlite:///~/.medclf/mlflow.db
    experiment: str = "medclf"  # MLflow experiment name


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    preset: str | None = None  # the YAML preset it was built from (name in configs/ or path), set by load_config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# what says where a run is logged and which preset it came from, not what it learns: free to change on resume
OUTCOME_FREE = ("track", "preset")


def flat_keys(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys (`train.lr`), the names `key=value` overrides use; tuples as lists."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat_keys(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def outcome_config(tree: dict[str, Any]) -> dict[str, Any]:
    """A config dict without OUTCOME_FREE parts: what two runs must share to learn the same thing."""
    return {k: v for k, v in tree.items() if k not in OUTCOME_FREE}


def load_config(preset: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML preset (a path, or a name in the repo's configs/), then `key=value` overrides."""
    cfg = Config()
    if preset is not None:
        path = resolve_preset(preset)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
        cfg = dataclasses.replace(merge(cfg, data, origin=str(path)), preset=str(preset))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override '{item}' is not key=value (e.g. train.epochs=5)")
        cfg = merge(cfg, _nest(key.strip(), yaml.safe_load(raw) if raw.strip() else None), origin="override")
    return cfg


def config_from_dict(data: dict[str, Any]) -> Config:
    return merge(Config(), data, origin="stored config")


# names a preset was known by before, so commands and studies written with them keep working
PRESET_ALIASES = {"seed_resnet50": "resnet50_imagenet_224"}


def preset_dirs() -> list[Path]:
    """Where preset names are looked up: ./configs, then the configs/ of the source tree medclf runs from."""
    return [Path.cwd() / "configs", Path(__file__).resolve().parents[2] / "configs"]


def list_presets() -> list[str]:
    """Names `--config NAME` accepts (the YAML files of `preset_dirs()`), sorted; study files are not presets."""
    names = {p.stem for base in preset_dirs() if base.is_dir() for p in base.glob("*.yaml")}
    return sorted(n for n in names if not n.startswith("study_"))


def resolve_preset(preset: str | Path) -> Path:
    path = Path(preset)
    if path.is_file():
        return path
    stem = path.stem if path.suffix in (".yaml", ".yml") else path.name
    for name in (path.name if path.suffix else f"{path.name}.yaml", f"{PRESET_ALIASES.get(stem, stem)}.yaml"):
        for base in preset_dirs():
            if (base / name).is_file():
                return base / name
    names = list_presets()
    if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:  # meant as a file, not a preset name
        raise ConfigError(f"{preset}: no such file (--config takes a YAML file or one of {', '.join(names)})")
    raise ConfigError(f"config preset '{preset}' not found: give a YAML file or one of {', '.join(names)}"
                      f"{did_you_mean(str(preset), names)}")


def preset_changes(cfg: Config) -> tuple[str, list[tuple[str, Any, Any]]]:
    """What `cfg` sets differently from the preset it was built from: (what it is compared with, rows of
    (dotted key, the preset's value, this config's value)). Without a preset, or when the preset is not found
    here (a run copied from another machine), the comparison is with the defaults, and the first item says so."""
    base, base_name = Config(), "the defaults"
    if cfg.preset:
        try:
            base, base_name = load_config(cfg.preset), f"preset {cfg.preset}"
        except ConfigError:
            base_name = f"the defaults (preset {cfg.preset} is not found here)"
    old = flat_keys({k: v for k, v in base.to_dict().items() if k != "preset"})
    new = flat_keys({k: v for k, v in cfg.to_dict().items() if k != "preset"})
    return base_name, [(k, old.get(k), v) for k, v in new.items() if old.get(k) != v]


def save_config(cfg: Config, path: str | Path) -> None:
    from medclf.io import write_text

    write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def merge(obj: Any, data: dict[str, Any], origin: str, prefix: str = "") -> Any:
    """Return a copy of dataclass `obj` with `data` applied, checking every key and type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: '{prefix.rstrip('.') or 'config'}' must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    changes = {}
    for key, value in data.items():
        if key not in fields:
            valid = [prefix + k for k in fields]
            raise ConfigError(f"{origin}: unknown key '{prefix}{key}'{did_you_mean(prefix + str(key), valid)} "
                              f"(valid: {', '.join(valid)})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            changes[key] = merge(current, value, origin, prefix=f"{prefix}{key}.")
        else:
            changes[key] = _coerce(value, hints[key], f"{origin}: '{prefix}{key}'")
    return dataclasses.replace(obj, **changes)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    options = typing.get_args(hint) if union else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"{where} cannot be null")
    for option in options:
        if option is type(None):
            continue
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    if float in options and isinstance(value, str):
        # YAML 1.1 reads "1e-3" (no dot) as a string, and eps are written as grey levels like "2/255"
        try:
            num, slash, den = value.partition("/")
            return float(num) / float(den) if slash else float(value)
        except (ValueError, ZeroDivisionError):
            pass
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ConfigError(f"{where} must be {names}, got {value!r}")


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out
