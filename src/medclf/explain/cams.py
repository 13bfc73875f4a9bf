"""Class activation maps from the `grad-cam` package (`pytorch_grad_cam`): gradcam, gradcam++, scorecam, eigencam.

The CAM arithmetic is the library's; this module only supplies what it needs from the model itself: the
target layer (`model.cam_target_layers()`), the ViT token reshape (`model.cam_reshape_transform`, None for
CNNs), and the target (the log-odds of the explained class, as the model's task reads its logits). Each CAM
object lives inside a `with` block that
releases its hooks and drops the output it keeps (with its autograd graph) as soon as the maps are out.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import nn

from medclf.errors import MedclfError
from medclf.explain.registry import register_method
from medclf.tasks import task_class


class LogOddsTarget:
    """The log-odds log(p / (1 - p)) of class `index` under the task's activation (`Task.log_odds`).

    Softmax (binary, multiclass): z_c - logsumexp(other logits); for two classes z_pos - z_neg, the quantity the
    operating threshold cuts (the raw logit z_pos alone would also credit whatever raises both logits together,
    which changes no decision). Sigmoid (multilabel): the logit z_c itself, since the other findings do not
    compete with this one. grad-cam calls targets on one output row (K,) at a time; batches (B, K) work too.
    """

    def __init__(self, index: int, task: str | None = None) -> None:
        self.index = int(index)
        self.log_odds = task_class(task).log_odds

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return self.log_odds(output, self.index)


def _grad_cam_module():
    try:
        import pytorch_grad_cam
    except ImportError as err:  # habit 9: heavy optional dependency, imported where used
        raise MedclfError("CAM methods need the grad-cam package: pip install grad-cam") from err
    return pytorch_grad_cam


@contextlib.contextmanager
def open_cam(cam_class: type, model: nn.Module, batch_size: int = 64) -> Iterator[object]:
    """A grad-cam CAM object on the model's own target layers; its hooks are removed when the block ends."""
    cam = cam_class(model=model, target_layers=model.cam_target_layers(),
                    reshape_transform=model.cam_reshape_transform)
    cam.batch_size = batch_size  # ScoreCAM reads it for its masked-input batches (default 16)
    try:
        yield cam
    finally:
        # BaseCAM.__exit__ would swallow IndexErrors; release explicitly instead, and drop `outputs`, which
        # holds the last forward's graph until the object is collected.
        cam.activations_and_grads.release()
        cam.outputs = None


@dataclass
class CamExplainer:
    """One grad-cam class behind the Explainer interface."""

    name: str
    cam_class_name: str  # attribute of pytorch_grad_cam
    vit_only: bool = False
    quiet: bool = False  # ScoreCAM prints a tqdm bar per image: silence it under our own progress bar

    def __call__(self, model: nn.Module, x: torch.Tensor, class_index: int) -> np.ndarray:
        cam_class = getattr(_grad_cam_module(), self.cam_class_name)
        task = getattr(getattr(model, "contract", None), "task", None)  # how this model's logits are read
        targets = [LogOddsTarget(class_index, task) for _ in range(x.shape[0])]
        sink = contextlib.redirect_stderr(io.StringIO()) if self.quiet else contextlib.nullcontext()
        # gradients are needed even when the caller runs under no_grad or inference_mode (a server)
        with torch.inference_mode(False), torch.enable_grad(), open_cam(cam_class, model) as cam, sink:
            maps = cam(input_tensor=x.clone(), targets=targets)
        return np.asarray(maps, dtype=np.float32)


register_method("gradcam", lambda: CamExplainer("gradcam", "GradCAM"))
register_method("gradcam++", lambda: CamExplainer("gradcam++", "GradCAMPlusPlus"))
register_method("scorecam", lambda: CamExplainer("scorecam", "ScoreCAM", quiet=True))
register_method("eigencam", lambda: CamExplainer("eigencam", "EigenCAM"))
