"""How a model's K logits become probabilities, per task type (medclf.tasks), and back.

Single-label tasks (binary, multiclass) read the logits with a softmax (rows sum to 1); a multilabel task reads
each logit with its own sigmoid (each label independently present or not). `logits_of` inverts either, so a
module that combines probabilities (an ensemble, the test-time flip) can still hand out logits.
"""

from __future__ import annotations

import torch

# The one floor (and, as 1 - PROB_EPS, ceiling) for a probability before a log or a logit: log(0) would give
# -inf logits (and infinite gradients for attacks). Logits are taken in float64, where 1 - 1e-12 exists
# (float32 rounds it to 1.0).
PROB_EPS = 1e-12


def probabilities(logits: torch.Tensor, task: str | None) -> torch.Tensor:
    """`B x K` logits -> `B x K` float32 probabilities."""
    logits = logits.float()
    return torch.sigmoid(logits) if task == "multilabel" else torch.softmax(logits, dim=1)


def logits_of(probs: torch.Tensor, task: str | None) -> torch.Tensor:
    """Logits whose `probabilities` are `probs`: log p (softmax renormalises) or log(p / (1 - p))."""
    if task == "multilabel":
        return torch.logit(probs.double().clamp(PROB_EPS, 1.0 - PROB_EPS)).to(probs.dtype)
    return torch.log(probs.clamp_min(PROB_EPS))
