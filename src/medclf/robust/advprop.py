"""AdvProp (Xie et al. 2020): adversarial examples go through auxiliary batch norms, clean ones through the main.

Clean and adversarial images have different statistics; mixing them in one BatchNorm hurts clean accuracy.
AdvProp keeps a second BN per layer for adversarial batches during training and uses only the main BNs at
test time.

How it is built so that checkpoints stay clean and strict:
- every `nn.BatchNorm2d` inside the classifier is replaced by a `DualBatchNorm2d`, a BatchNorm2d subclass
  that owns the main BN's parameters and buffers under the same names (the classifier's state dict keys do
  not change) and routes to its auxiliary BN while `aux_active` is set;
- the auxiliary BNs are registered in the `AdvPropModel` wrapper (`aux_bn`), not in the classifier, so the
  optimizer trains them, `last.pt`'s training state keeps them for `--resume`, but `save_checkpoint`
  (which unwraps `.module`) writes only the classifier: `best.pt` loads into a plain model.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator

import torch
from torch import nn

from medclf.errors import ConfigError, MedclfError


class DualBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d (the main one) that hands its input to an auxiliary BatchNorm2d while `aux_active`."""

    aux_active: bool = False

    @classmethod
    def from_bn(cls, bn: nn.BatchNorm2d) -> DualBatchNorm2d:
        dual = cls(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                   track_running_stats=bn.track_running_stats)
        # share, not copy: the same Parameter/buffer objects keep their identity (and device, dtype)
        for name, param in bn.named_parameters(recurse=False):
            setattr(dual, name, param)
        for name, buf in bn.named_buffers(recurse=False):
            dual.register_buffer(name, buf)
        dual.train(bn.training)
        # a plain list, not a submodule: the aux BN must not appear in the classifier's state dict
        dual._aux = [copy.deepcopy(bn)]
        return dual

    @property
    def aux(self) -> nn.BatchNorm2d:
        return self._aux[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.aux_active:
            return self.aux(x)
        return super().forward(x)


class AdvPropModel(nn.Module):
    """Training-time wrapper: `module` is the classifier (with dual BNs), `aux_bn` holds the auxiliary BNs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        others = [n for n, m in model.named_modules()
                  if isinstance(m, nn.modules.batchnorm._BatchNorm) and type(m) is not nn.BatchNorm2d]
        if others:
            raise ConfigError(f"train.adversarial=advprop: {getattr(model, 'model_name', type(model).__name__)} has "
                              f"batch norms other than BatchNorm2d ({others[:3]}); not supported")
        self.module = model
        self.aux_bn = nn.ModuleDict()
        for name, bn in [(n, m) for n, m in model.named_modules() if type(m) is nn.BatchNorm2d]:
            dual = DualBatchNorm2d.from_bn(bn)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, dual)
            self.aux_bn[name.replace(".", "__")] = dual.aux
        if not len(self.aux_bn):
            raise ConfigError(f"train.adversarial=advprop needs a model with batch norm; "
                              f"{getattr(model, 'model_name', type(model).__name__)} has none (use pgd or fgsm)")
        self.contract = getattr(model, "contract", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def dual_bns(self) -> list[DualBatchNorm2d]:
        return [m for m in self.module.modules() if isinstance(m, DualBatchNorm2d)]

    @contextlib.contextmanager
    def auxiliary(self) -> Iterator[None]:
        """Route every batch norm to its auxiliary copy inside the block (adversarial examples)."""
        duals = self.dual_bns()
        for m in duals:
            m.aux_active = True
        try:
            yield
        finally:
            for m in duals:
                m.aux_active = False

    # the classifier's interface, so code that asks the training model for these still works
    def feature_stages(self) -> list[tuple[str, nn.Module]]:
        # also stops medclf.models.param_groups from unwrapping past this wrapper (the aux BNs must be optimised)
        return self.module.feature_stages()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.embed(x)


def find_advprop(model: nn.Module) -> AdvPropModel:
    """The AdvPropModel inside DDP / EMA / torch.compile wrappers."""
    for _ in range(5):
        if isinstance(model, AdvPropModel):
            return model
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            break
        model = inner
    raise MedclfError("train.adversarial=advprop: the training model has no auxiliary batch norms; build_setup must "
                      "wrap it with medclf.robust.advprop.AdvPropModel before creating the optimizer")

