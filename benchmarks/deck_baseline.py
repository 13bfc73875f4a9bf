"""The seed deck's pipeline, written the way the deck wrote it: the naive baselines the benchmarks compare against.

Nothing in medclf uses this module. It is kept deliberately plain (one DICOM decode per item, float64 `/max`,
PIL RGB, torchvision PIL transforms, a plain fp32 NCHW training step) because that is what is being measured.

    MDataset(paths, labels, transform)  -> (3 x 224 x 224 float in [0, 1], label) per item
    deck_transform(train)               -> Resize(224), [RandomHorizontalFlip()], ToTensor()
    deck_model(num_classes)             -> torchvision resnet50 with a new fc
    deck_train_step(model, optimizer, images, labels) -> loss
    deck_predict_file(model, path)      -> probabilities, one file at a time

Where the deck is silent, the choices favour the baseline: its loader gets the same worker count, pinned
memory and persistent workers as ours, and the ImageNet normalisation (absent from its transform list) is
applied to the whole batch with one tensor op (`normalise_batch`) instead of per item.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIZE = 224


class MDataset(Dataset):
    """The deck's dataset: every `__getitem__` reads and decodes the full DICOM file."""

    def __init__(self, paths: Sequence[str | Path], labels: Sequence[int], transform=None):
        self.paths = [str(p) for p in paths]
        self.labels = [int(v) for v in labels]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, idx: int):
        import pydicom
        from PIL import Image

        img = pydicom.dcmread(self.paths[idx]).pixel_array
        img = img / img.max()
        img = (img * 255).astype(np.uint8)
        img = Image.fromarray(img).convert("RGB")
        if self.transform is not None:
            img = self.transform(img)
        return img, self.labels[idx]


def deck_transform(train: bool = True):
    """The deck's torchvision transform list."""
    from torchvision import transforms as T

    steps = [T.Resize(SIZE)] + ([T.RandomHorizontalFlip()] if train else []) + [T.ToTensor()]
    return T.Compose(steps)


def deck_loader(paths: Sequence[str | Path], labels: Sequence[int], batch_size: int, workers: int,
                train: bool = True, pin_memory: bool = False, epoch_samples: int | None = None) -> DataLoader:
    """DataLoader over MDataset, with the same loader mechanics ours gets (workers, pinning, persistence).

    `epoch_samples`: epoch length (chained shuffles), so both pipelines can be given the same epochs."""
    dataset = MDataset(paths, labels, deck_transform(train))
    sampler = RandomSampler(dataset, num_samples=epoch_samples) if train else None
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=pin_memory,
                      persistent_workers=workers > 0)


def normalise_batch(x: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation of a `B x 3 x H x W` batch in [0, 1] (one op per batch: the cheapest form)."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def deck_model(num_classes: int = 2) -> torch.nn.Module:
    """torchvision ResNet50 with its fc replaced (the deck loads ImageNet weights; speed does not depend on them)."""
    import torchvision

    model = torchvision.models.resnet50(weights=None)
    model.fc = torch.nn.Linear(model.fc.in_features, num_classes)
    return model


def deck_optimizer(model: torch.nn.Module, lr: float = 1e-4) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=lr)


def deck_train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                    labels: torch.Tensor) -> float:
    """fp32, NCHW, no compile: the deck's loop body."""
    model.train()
    optimizer.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    return float(loss.item())


@torch.no_grad()
def deck_predict_file(model: torch.nn.Module, path: str | Path, device: torch.device | str = "cpu") -> np.ndarray:
    """One file -> class probabilities, the deck's way (full decode, PIL, eager fp32 model)."""
    image, _ = MDataset([path], [0], deck_transform(train=False))[0]
    x = normalise_batch(image.unsqueeze(0).to(device))
    model.eval()
    return torch.softmax(model(x), dim=1)[0].cpu().numpy()
