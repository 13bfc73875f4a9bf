"""Batched transforms from the cache's uint8 grey images to normalised model input.

They run on whole batches on the training device (GPU when there is one), so no per-image Python work and no
PIL round trip: the cache is already decoded and square, and every operation here is one tensor op per batch.
Everything is derived from the model's DataContract (input size, channels, mean/std), never configured twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from medclf.contract import DataContract


@dataclass(frozen=True)
class Augment:
    flip: bool = True  # the seed deck's random horizontal flip
    affine: bool = False  # rotation +-7 deg, scale 0.9-1.1, shift +-5%: plausible positioning differences
    contrast: bool = False  # brightness/contrast +-15%: exposure differences between machines

    @classmethod
    def from_config(cls, data_cfg) -> Augment:
        return cls(flip=data_cfg.flip, affine=data_cfg.affine, contrast=data_cfg.contrast)


class BatchTransform:
    """uint8 `B x S x S` (or `B x 1 x S x S`) -> float `B x C x H x W`, normalised; random only when `augment` is
    set."""

    def __init__(self, contract: DataContract, augment: Augment | None = None):
        self.size = contract.input_size
        self.in_chans = contract.in_chans
        self.mean = torch.tensor(contract.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(contract.std, dtype=torch.float32).view(1, -1, 1, 1)
        self.augment = augment

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.normalise(self.unit(images, generator))

    def unit(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 batch -> resized (and augmented) grey `B x 1 x H x W` in [0, 1], before normalisation."""
        x = resize(to_unit_float(images), self.size)
        if self.augment is not None:
            x = self._augment(x, generator)
        return x

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-range grey `B x 1 x H x W` -> normalised `B x C x H x W` (attacks perturb before this step)."""
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        if self.in_chans == 3:
            x = x.expand(-1, 3, -1, -1)
        # (x - mean) / std as one fused multiply-add: the normalisation dominated the loader's time
        return torch.addcmul(-mean / std, x, 1.0 / std)

    def _augment(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        aug = self.augment
        if aug.affine:
            x = random_affine(x, gen)
        if aug.contrast:
            x = random_contrast(x, gen)
        if aug.flip:
            flip = _rand(x.shape[0], gen, x.device) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        return x


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    if images.dim() == 3:
        images = images.unsqueeze(1)
    return images.float().div_(255.0)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    # antialias matters when shrinking a 256-512 px cache: without it thin structures alias into noise
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def random_affine(x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    n, device = x.shape[0], x.device
    angle = (_rand(n, gen, device) * 2 - 1) * math.radians(7)
    scale = 1.0 + (_rand(n, gen, device) * 2 - 1) * 0.1
    shift = (torch.stack([_rand(n, gen, device), _rand(n, gen, device)], 1) * 2 - 1) * 0.1  # grid units: 5% of size
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_contrast(x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    n, device = x.shape[0], x.device
    contrast = (1.0 + (_rand(n, gen, device) * 2 - 1) * 0.15).view(-1, 1, 1, 1)
    brightness = ((_rand(n, gen, device) * 2 - 1) * 0.15).view(-1, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * contrast + mean + brightness).clamp_(0.0, 1.0)


def _rand(n: int, gen: torch.Generator | None, device: torch.device) -> torch.Tensor:
    # draw on the CPU generator so results are identical whatever the device
    return torch.rand(n, generator=gen).to(device)


def make_transform(contract: DataContract, train: bool, augment: Augment | None = None) -> BatchTransform:
    return BatchTransform(contract, augment if train else None)
