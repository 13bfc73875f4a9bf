"""Models: registry and factory, data contract, weights, checkpoints, optimizer parameter groups.

    from medclf.models import create_model
    model = create_model("resnet50", num_classes=2, pretrained=True, label_names=["normal", "pneumonia"])
    logits = model(x)                      # x: B x 3 x 224 x 224 normalised by model.contract
"""

from medclf.contract import DataContract
from medclf.models.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from medclf.models.param_groups import param_groups
from medclf.models.registry import create_model, list_models, register_model
from medclf.models.weights import load_weights
from medclf.models.wrappers import ClassifierModel

__all__ = [
    "ClassifierModel",
    "DataContract",
    "create_model",
    "list_models",
    "load_checkpoint",
    "load_weights",
    "param_groups",
    "read_checkpoint",
    "register_model",
    "save_checkpoint",
]
