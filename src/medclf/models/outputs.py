"""How a model's K logits become probabilities, per task type (medclf.tasks), and back.

Single-label tasks (binary, multiclass) read the logits with a softmax (rows sum to 1); a multilabel task reads
each logit with its own sigmoid (each label independently present or not). `logits_of` inverts either, so a
module that combines probabilities (an ensemble, the test-time flip) can still hand out logits.
"""

from __future__ import annotations

import torch

_TINY = 1e-12  # log(0) would give -inf logits (and infinite gradients for attacks)


def probabilities(logits: torch.Tensor, task: str | None) -> torch.Tensor:
    """`B x K` logits -> `B x K` float32 probabilities."""
    logits = logits.float()
    return torch.sigmoid(logits) if task == "multilabel" else torch.softmax(logits, dim=1)


def logits_of(probs: torch.Tensor, task: str | None) -> torch.Tensor:
    """Logits whose `probabilities` are `probs`: log p (softmax renormalises) or log(p / (1 - p))."""
    if task == "multilabel":
        return torch.logit(probs.clamp(_TINY, 1.0 - 1e-7))
    return torch.log(probs.clamp_min(_TINY))


def tempered(probs: torch.Tensor, temperature: torch.Tensor, task: str | None) -> torch.Tensor:
    """`... x K` probabilities as they would be with their logits divided by `temperature` (one value, or one per
    label for multilabel), over the last axis (medclf.evaluation.temperature holds the fit and the same formula
    in NumPy)."""
    z = logits_of(probs.float(), task) / temperature
    return torch.sigmoid(z) if task == "multilabel" else torch.softmax(z, dim=-1)
