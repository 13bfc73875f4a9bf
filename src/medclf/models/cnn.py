"""torchvision CNNs (ResNet, DenseNet/CheXNet, EfficientNet) behind the `ClassifierModel` interface."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medclf.models.wrappers import ClassifierModel


def imagenet_norm(name: str) -> tuple[list[float], list[float]]:
    """mean/std of the torchvision weights' own preprocessing (ImageNet statistics)."""
    import torchvision.models as tvm

    preprocess = tvm.get_model_weights(name).DEFAULT.transforms()
    return list(preprocess.mean), list(preprocess.std)


class _PooledCNN(ClassifierModel):
    """Global average pool -> dropout -> linear classifier on the last feature map."""

    def __init__(self, model: nn.Module, name: str, drop_rate: float) -> None:
        super().__init__(model, name, *imagenet_norm(name))
        self.head_drop = nn.Dropout(drop_rate)

    def pre_logits(self, features: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(features, 1), 1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.get_submodule(self.head_names[0])(self.head_drop(self.pre_logits(features)))

    @property
    def num_features(self) -> int:
        return int(self.model.get_submodule(self.head_names[0]).in_features)


class ResNetClassifier(_PooledCNN):
    first_conv = "conv1"
    head_names = ("fc",)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        return m.layer4(m.layer3(m.layer2(m.layer1(x))))

    def cam_target_layers(self) -> list[nn.Module]:
        return [self.model.layer4[-1]]

    def feature_stages(self) -> list[tuple[str, nn.Module]]:
        return [(f"layer{i}", getattr(self.model, f"layer{i}")) for i in range(1, 5)]


class DenseNetClassifier(_PooledCNN):
    first_conv = "features.conv0"
    head_names = ("classifier",)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        # Not in place (torchvision uses inplace=True): a CAM hook on norm5 keeps its output unmodified.
        return F.relu(self.model.features(x))

    def cam_target_layers(self) -> list[nn.Module]:
        return [self.model.features.norm5]

    def feature_stages(self) -> list[tuple[str, nn.Module]]:
        return [(n, m) for n, m in self.model.features.named_children() if n.startswith("denseblock")]


class EfficientNetClassifier(ClassifierModel):
    first_conv = "features.0.0"
    head_names = ("classifier",)  # Sequential(Dropout(drop_rate), Linear), torchvision's own layout

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__(model, name, *imagenet_norm(name))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)

    def pre_logits(self, features: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(features, 1), 1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.classifier(self.pre_logits(features))

    def cam_target_layers(self) -> list[nn.Module]:
        return [self.model.features[-1]]  # the final 1x1 conv block, whose output forward_features returns

    def feature_stages(self) -> list[tuple[str, nn.Module]]:
        # features[1..7] are the MBConv stages; features[0] is the stem and features[8] the 1x1 head conv.
        return [(f"features.{i}", self.model.features[i]) for i in range(1, len(self.model.features) - 1)]

    @property
    def num_features(self) -> int:
        return int(self.model.classifier[-1].in_features)


def build_torchvision_cnn(name: str, num_classes: int, drop_rate: float) -> ClassifierModel:
    """A randomly initialised torchvision CNN with a `num_classes` head (weights are loaded afterwards)."""
    import torchvision.models as tvm

    if name.startswith("resnet"):
        return ResNetClassifier(tvm.get_model(name, weights=None, num_classes=num_classes), name, drop_rate)
    if name.startswith("densenet"):
        return DenseNetClassifier(tvm.get_model(name, weights=None, num_classes=num_classes), name, drop_rate)
    if name.startswith("efficientnet"):
        model = tvm.get_model(name, weights=None, num_classes=num_classes, dropout=drop_rate)
        return EfficientNetClassifier(model, name)
    raise ValueError(f"not a torchvision CNN family: {name}")
