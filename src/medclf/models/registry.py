"""Model registry and factory (DESIGN habit 1, after timm's `register_model` / `create_model`).

Built-in names are torchvision models; any timm model is available as `timm:<name>`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from medclf.contract import DataContract
from medclf.errors import ConfigError
from medclf.models.wrappers import ClassifierModel
from medclf.registry import Registry

log = logging.getLogger("medclf.models")

TIMM_PREFIX = "timm:"
DEFAULT_INPUT_SIZE = 224

# builder(num_classes, input_size, drop_rate, pretrained) -> a 3-channel ClassifierModel with weights loaded
Builder = Callable[[int, int | None, float, bool], ClassifierModel]
MODELS: Registry[Builder] = Registry(
    "model", field="model.name", error=ConfigError,
    valid_tail=f", or any timm model as '{TIMM_PREFIX}<name>' (e.g. {TIMM_PREFIX}vit_small_patch16_224)")


def register_model(name: str, builder: Builder | None = None) -> Builder | Callable[[Builder], Builder]:
    """Add a model name; `builder(num_classes, input_size, drop_rate, pretrained)` returns a ClassifierModel.
    `register_model(name, builder)`, or `@register_model(name)` above the builder."""
    if name.startswith(TIMM_PREFIX):
        raise ConfigError(f"model names starting with '{TIMM_PREFIX}' are reserved for timm models")
    return MODELS.register(name) if builder is None else MODELS.register(name, builder)


def list_models() -> list[str]:
    """The built-in names. Any timm model is also available as 'timm:<name>' (see timm.list_models())."""
    return MODELS.names()


def _torchvision_cnn(name: str) -> Builder:
    def build(num_classes: int, input_size: int | None, drop_rate: float, pretrained: bool) -> ClassifierModel:
        from medclf.models.cnn import build_torchvision_cnn
        from medclf.models.weights import load_state_into, torchvision_imagenet_state

        model = build_torchvision_cnn(name, num_classes, drop_rate)
        if pretrained:
            load_state_into(model, torchvision_imagenet_state(name), source=f"torchvision ImageNet weights ({name})")
        return model

    return build


def _torchvision_vit(name: str) -> Builder:
    def build(num_classes: int, input_size: int | None, drop_rate: float, pretrained: bool) -> ClassifierModel:
        from medclf.models.vit import build_torchvision_vit
        from medclf.models.weights import load_state_into, torchvision_imagenet_state

        model = build_torchvision_vit(name, num_classes, input_size or DEFAULT_INPUT_SIZE, drop_rate)
        if pretrained:  # weights for 224 px; adapt_state_dict interpolates the position embeddings
            load_state_into(model, torchvision_imagenet_state(name), source=f"torchvision ImageNet weights ({name})")
        return model

    return build


for _name in ("resnet18", "resnet34", "resnet50", "densenet121", "efficientnet_b0"):
    register_model(_name, _torchvision_cnn(_name))
register_model("vit_b_16", _torchvision_vit("vit_b_16"))


def _build_timm(timm_name: str, num_classes: int, input_size: int | None, drop_rate: float,
                pretrained: bool) -> ClassifierModel:
    from medclf.models.timm_models import build_timm, check_timm_name
    from medclf.models.weights import timm_pretrained_file

    check_timm_name(timm_name)  # before looking for weights of a model that does not exist
    file = timm_pretrained_file(timm_name) if pretrained else None
    return build_timm(timm_name, num_classes, input_size, drop_rate, file)


def _check_args(num_classes: int, in_chans: int, input_size: int | None, drop_rate: float,
                label_names: list[str] | None, positive_index: int) -> list[str]:
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes must be an integer >= 2 (models output K >= 2 logits), got {num_classes!r}")
    if in_chans not in (1, 3):
        raise ConfigError(f"model.in_chans must be 1 or 3, got {in_chans!r}")
    if input_size is not None and (not isinstance(input_size, int) or input_size < 16):
        raise ConfigError(f"model.input_size must be an integer >= 16, got {input_size!r}")
    if not 0.0 <= drop_rate < 1.0:
        raise ConfigError(f"model.drop_rate must be in [0, 1), got {drop_rate!r}")
    names = [f"class_{i}" for i in range(num_classes)] if label_names is None else [str(n) for n in label_names]
    if len(names) != num_classes:
        raise ConfigError(f"{len(names)} label_names {names} for num_classes={num_classes}")
    if not 0 <= positive_index < num_classes:
        raise ConfigError(f"positive_index {positive_index} is not in [0, {num_classes - 1}]")
    return names


def create_model(name: str, num_classes: int, pretrained: bool = False, weights: str | Path | None = None,
                 in_chans: int = 3, input_size: int | None = None, drop_rate: float = 0.0,
                 label_names: list[str] | None = None, positive_index: int = 1,
                 task: str | None = None) -> ClassifierModel:
    """Build a classifier by name, with its data contract.

    pretrained: the library's ImageNet weights (cache or download; a clear MedclfError when unavailable).
    weights: a local file (torchvision/timm state dict or a medclf checkpoint); takes precedence over
        `pretrained`. A classifier head of another size is dropped and reported.
    in_chans: 3 (the grey image is replicated by the transform) or 1 (the first layer's filters are summed).
    input_size: the square input side; default 224 (timm: its pretrained config's size). ViTs are built for it.
    drop_rate: dropout before the classifier.
    task: binary, multiclass or multilabel (medclf.tasks; default from num_classes): how the logits are read.
    """
    names = _check_args(num_classes, in_chans, input_size, drop_rate, label_names, positive_index)
    if weights is not None and pretrained:
        log.info("model.weights=%s given: not loading the library's pretrained weights", weights)
        pretrained = False
    if name.startswith(TIMM_PREFIX):
        model = _build_timm(name[len(TIMM_PREFIX):], num_classes, input_size, drop_rate, pretrained)
    else:
        model = MODELS.lookup(name)(num_classes, input_size, drop_rate, pretrained)
    if input_size is None:
        input_size = _default_input_size(model)
    model.adapt_in_chans(in_chans)
    if weights is not None:
        from medclf.models.weights import load_weights

        load_weights(model, weights)
    mean, std = model.pretrained_mean, model.pretrained_std
    if in_chans == 1:  # one channel stands for the replicated grey image: average the per-channel statistics
        mean, std = [sum(mean) / len(mean)], [sum(std) / len(std)]
    model.contract = DataContract(model_name=name, num_classes=num_classes, label_names=names,
                                  positive_index=positive_index, input_size=input_size, in_chans=in_chans,
                                  mean=mean, std=std, task=task)
    model.build_kwargs = {"num_classes": num_classes, "in_chans": in_chans, "input_size": input_size,
                          "drop_rate": float(drop_rate), "label_names": names, "positive_index": positive_index}
    return model


def _default_input_size(model: ClassifierModel) -> int:
    from medclf.models.timm_models import TimmClassifier, timm_default_input_size

    if isinstance(model, TimmClassifier):
        return timm_default_input_size(model)
    return DEFAULT_INPUT_SIZE
