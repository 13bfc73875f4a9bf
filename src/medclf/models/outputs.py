"""How a model's K logits become probabilities, per task type, and back: the Task classes' own activations
(medclf.tasks), by task name, for the modules that hold a contract rather than a Task.

Single-label tasks (binary, multiclass) read the logits with a softmax (rows sum to 1); a multilabel task reads
each logit with its own sigmoid (each label independently present or not). `logits_of` inverts either, so a
module that combines probabilities (an ensemble, the test-time flip) can still hand out logits.
"""

from __future__ import annotations

import torch

from medclf.tasks import PROB_EPS, task_class  # noqa: F401  (PROB_EPS: re-exported for callers)


def probabilities(logits: torch.Tensor, task: str | None) -> torch.Tensor:
    """`B x K` logits -> `B x K` float32 probabilities."""
    return task_class(task).probabilities(logits)


def logits_of(probs: torch.Tensor, task: str | None) -> torch.Tensor:
    """Logits whose `probabilities` are `probs`: log p (softmax renormalises) or log(p / (1 - p))."""
    return task_class(task).logits(probs)


def tempered(probs: torch.Tensor, temperature: torch.Tensor, task: str | None) -> torch.Tensor:
    """`... x K` probabilities with their logits divided by `temperature` (`Task.tempered`)."""
    return task_class(task).tempered(probs, temperature)
