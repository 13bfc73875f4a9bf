"""The Ensemble module: trained models combined into one predictor with the interface of one model (habit 6).

`Ensemble.forward(x)` returns the log of the combined class probabilities, so the softmax that every caller
applies to a model's output gives back exactly the combined probabilities: softmax(log p) = p / sum(p) = p.
Combination rules (`COMBINES`):

- ``mean``: the mean of the members' softmax probabilities (default).
- ``weighted``: a weighted mean, weights proportional to each member's ROC AUC on the cache's validation
  split (w_i = AUC_i / sum AUC); equal weights when an AUC is undefined.
- ``vote``: the positive-class probability is the fraction of members whose own positive probability reaches
  their own operating threshold; the remaining mass goes to the other classes in proportion to their mean
  probability (for two classes: [1 - f, f]).

Opening an ensemble run directory is the run layer's job (`medclf.runs`); training one is `medclf.ensemble`'s.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from medclf.contract import DataContract
from medclf.data.transforms import make_transform, resize
from medclf.errors import MedclfError
from medclf.models.outputs import PROB_EPS, logits_of, probabilities

COMBINES = ("mean", "vote", "weighted")


class Ensemble(nn.Module):
    """Members (any modules returning K logits) combined as one model; `contract` describes its input."""

    def __init__(self, members: list[nn.Module], member_contracts: list[DataContract], contract: DataContract,
                 combine: str = "mean", weights: list[float] | None = None) -> None:
        super().__init__()
        if combine not in COMBINES:
            raise MedclfError(f"unknown combine '{combine}'; choose one of {', '.join(COMBINES)}")
        if combine == "vote" and contract.multilabel:
            raise MedclfError("combine 'vote' counts votes for one positive class; a multilabel ensemble "
                              "combines with 'mean' or 'weighted'")
        if not members or len(members) != len(member_contracts):
            raise MedclfError(f"an ensemble needs members with one contract each, got {len(members)} and "
                              f"{len(member_contracts)}")
        self.members = nn.ModuleList(members)
        self.member_contracts = list(member_contracts)
        self.contract = contract
        self.combine = combine
        w = torch.full((len(members),), 1.0 / len(members)) if weights is None else torch.tensor(weights)
        if len(w) != len(members) or (w < 0).any() or not torch.isclose(w.sum(), torch.tensor(1.0), atol=1e-5):
            raise MedclfError(f"ensemble weights must be {len(members)} non-negative numbers summing to 1, "
                              f"got {weights}")
        self.register_buffer("weights", w.float())
        self.register_buffer("thresholds", torch.tensor([c.threshold for c in member_contracts]).float())
        self._adapters = [_needs_adapter(c, contract) for c in member_contracts]

    def member_probs(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities of every member, `M x B x K` (float32): softmax, or sigmoids for a multilabel task."""
        return torch.stack([probabilities(m(self.member_input(i, x)), self.contract.task)
                            for i, m in enumerate(self.members)])

    def combine_probs(self, member_probs: torch.Tensor) -> torch.Tensor:
        """`M x B x K` member probabilities -> `B x K` combined probabilities (rows sum to 1)."""
        if self.combine != "vote":
            w = self.weights.to(member_probs.device)
            return (w.view(-1, 1, 1) * member_probs).sum(dim=0)
        pos = self.contract.positive_index
        t = self.thresholds.to(member_probs.device).view(-1, 1)
        votes = (member_probs[:, :, pos] >= t).float().mean(dim=0)  # B
        others = member_probs.mean(dim=0)
        others[:, pos] = 0.0
        others = others / others.sum(dim=1, keepdim=True).clamp_min(PROB_EPS)
        out = others * (1.0 - votes).unsqueeze(1)
        out[:, pos] = votes
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the combined probabilities (their log, or log-odds for multilabel): the task's softmax or
        sigmoids turn them back into them."""
        return logits_of(self.combine_probs(self.member_probs(x)), self.contract.task)

    def member_input(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Re-express the ensemble's normalised input in member i's contract (size, channels, mean/std)."""
        if not self._adapters[i]:
            return x
        c = self.contract
        unit = x[:, :1] * c.std[0] + c.mean[0]  # grey is replicated across channels, so channel 0 is the image
        member = make_transform(self.member_contracts[i], train=False)
        return member.normalise(resize(unit, self.member_contracts[i].input_size))


def is_ensemble(model: nn.Module) -> bool:
    """The one test for "is this an ensemble": a module with a non-empty `members` list (an `Ensemble`, or a
    stand-in with the same interface)."""
    return bool(getattr(model, "members", None))


def members_of(model: nn.Module) -> list[nn.Module]:
    """The member models of an ensemble, or `[model]`."""
    return list(model.members) if is_ensemble(model) else [model]  # type: ignore[arg-type]


def _needs_adapter(member: DataContract, ensemble: DataContract) -> bool:
    keys = ("input_size", "in_chans", "mean", "std")
    return any(getattr(member, k) != getattr(ensemble, k) for k in keys)


def ensemble_contract(first: DataContract, threshold: float, name: str, spec: dict | None = None) -> DataContract:
    """The ensemble's contract: the first member's input description, its own name and threshold, and why the
    threshold is what it is (from ensemble.json, `spec`; never the first member's reasons)."""
    spec = spec or {}
    return replace(first, model_name=name, threshold=float(threshold), ood=None,
                   threshold_source=spec.get("threshold_source"), threshold_reason=spec.get("threshold_reason"),
                   threshold_warnings=list(spec.get("threshold_warnings") or []),
                   thresholds=None if spec.get("thresholds") is None else list(spec["thresholds"]),
                   temperature=spec.get("temperature"), conformal=spec.get("conformal"),
                   operating_point=spec.get("operating_point"))
