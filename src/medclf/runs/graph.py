"""The one computation from images to probabilities, as a module both backends run.

`InferenceModule` takes uint8 images exactly as a cache holds them (`B x S x S`) and returns
- `probs` `B x K`: the class probabilities the run's operating threshold applies to (the ensemble's combination
  and the flip test-time augmentation that chose the threshold included),
- `member_probs` `M x B x K`: each member's probabilities (M = 1 for a single model), same augmentation,
- `ood` `B x M` (only when every member carries a Mahalanobis detector): each member's OOD score.

The eager backend calls it; the ONNX backend runs the same module exported (resize and normalisation inside
the graph), so the two cannot drift apart. Resizing and normalising a model's input happen here and nowhere else
outside training: a workflow that needs the bare model's input (CAMs, feature maps, the service's heat map) calls
`model_input`, the graph's own preprocessing.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from medclf.contract import DataContract
from medclf.data.transforms import BatchTransform, make_transform
from medclf.evaluation.ood import detector_arrays
from medclf.models.ensemble import members_of
from medclf.models.outputs import logits_of, probabilities, tempered


def preprocessing(contract: DataContract) -> BatchTransform:
    """The graph's preprocessing for a contract: uint8 -> resized unit-range grey (`.unit`) -> normalised."""
    return make_transform(contract, train=False)


def model_input(contract: DataContract, images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 `B x S x S` images -> the normalised `B x C x H x W` input the bare model takes (the unflipped view
    the graph feeds it), on the images' device."""
    return preprocessing(contract)(torch.as_tensor(images))


class InferenceModule(nn.Module):
    """`model` is a ClassifierModel or an Ensemble (anything with the same interface)."""

    def __init__(self, model: nn.Module, contract: DataContract, tta_flip: bool = False,
                 detectors: list[dict] | None = None) -> None:
        super().__init__()
        self.model = model
        self.contract = contract
        self.transform = preprocessing(contract)
        self.tta_flip = bool(tta_flip)
        self.mahalanobis = nn.ModuleList(
            [MahalanobisScore(d) for d in detectors] if detectors and _all_mahalanobis(detectors) else [])
        # temperature scaling (contract.temperature), applied last so ONNX, serve and predict share it
        self.has_temperature = contract.temperature is not None
        self.register_buffer("temperature", torch.tensor(contract.temperature or [1.0], dtype=torch.float32))

    @property
    def members(self) -> list[nn.Module]:
        return members_of(self.model)

    @property
    def has_ood(self) -> bool:
        return len(self.mahalanobis) > 0

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.from_unit(self.transform.unit(images))

    def from_unit(self, x_unit: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Unit-range grey `B x 1 x H x W` at the model's input size (what attacks perturb) -> the outputs."""
        x = self.transform.normalise(x_unit)
        per_view = [self._member_probs(v) for v in self.views(x)]
        member_probs = torch.stack(per_view).mean(dim=0)
        probs = torch.stack([self._combine(p) for p in per_view]).mean(dim=0)
        if self.has_temperature:
            probs, member_probs = self._temper(probs), self._temper(member_probs)
        if not self.has_ood:
            return probs, member_probs
        return probs, member_probs, self.ood_scores(x)

    def views(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The test-time views of a normalised batch: itself, and its mirror when the run flips."""
        return [x, x.flip(-1)] if self.tta_flip else [x]

    def view_logits(self, images: torch.Tensor) -> torch.Tensor:
        """A single model's raw logits `B x K` for uint8 images, averaged over the test-time views (what the
        energy OOD score reads; an ensemble has no logits of its own, only combined probabilities)."""
        if len(self.members) != 1:
            raise ValueError("view_logits: an ensemble has no logits of its own")
        x = self.transform(images)
        return torch.stack([self.model(v).float() for v in self.views(x)]).mean(dim=0)

    def log_probs(self, x_unit: torch.Tensor) -> torch.Tensor:
        """Logits of `probs` (log p; log-odds for multilabel): what an attack's loss reads as logits."""
        return logits_of(self.from_unit(x_unit)[0], self.contract.task)

    def ood_scores(self, x: torch.Tensor) -> torch.Tensor:
        """`B x M` Mahalanobis scores of the normalised (unflipped) batch, one column per member."""
        return torch.stack([score(self._embed(i, x)) for i, score in enumerate(self.mahalanobis)], dim=1)

    def embeddings(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Each member's pooled penultimate features `B x D_i` for uint8 images (for fitting detectors)."""
        x = self.transform(images)
        return [self._embed(i, x) for i in range(len(self.members))]

    def _temper(self, probs: torch.Tensor) -> torch.Tensor:
        # a registered buffer (a Tensor; nn.Module's __getattr__ is typed Tensor | Module)
        temperature: torch.Tensor = self.temperature  # type: ignore[assignment]
        return tempered(probs, temperature.to(probs.device), self.contract.task)

    def _member_probs(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self.model, "member_probs"):
            return self.model.member_probs(x)
        return probabilities(self.model(x), self.contract.task).unsqueeze(0)

    def _combine(self, member_probs: torch.Tensor) -> torch.Tensor:
        if hasattr(self.model, "combine_probs"):
            return self.model.combine_probs(member_probs)
        return member_probs[0]

    def _embed(self, i: int, x: torch.Tensor) -> torch.Tensor:
        adapt = getattr(self.model, "member_input", None)
        xi = adapt(i, x) if adapt is not None else x
        return self.members[i].embed(xi).float()


class MahalanobisScore(nn.Module):
    """min over classes of (f - mu_k)^T P (f - mu_k); classes absent from training never match (+inf)."""

    def __init__(self, detector: dict) -> None:
        super().__init__()
        means, precision = detector_arrays(detector)
        present = ~torch.isnan(means).any(dim=1)
        self.register_buffer("means", torch.nan_to_num(means, nan=0.0))
        self.register_buffer("precision", precision)
        self.register_buffer("present", present)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        diff = features.unsqueeze(1) - self.means.unsqueeze(0)  # B x K x D
        dist = ((diff @ self.precision) * diff).sum(dim=-1)
        dist = torch.where(self.present.unsqueeze(0), dist, torch.full_like(dist, float("inf")))
        return dist.min(dim=1).values


def _all_mahalanobis(detectors: list[dict]) -> bool:
    return all(d and d.get("score") == "mahalanobis" and "means" in d for d in detectors)
