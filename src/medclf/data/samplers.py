"""Training samplers behind one name -> constructor registry: `shuffle` and `balanced`.

    sampler = create_sampler("balanced", train_ds, seed=cfg.seed, num_replicas=world_size, rank=rank)
    for epoch in range(start_epoch, epochs):
        sampler.set_epoch(epoch)          # required every epoch, as with DistributedSampler
        for batch in DataLoader(train_ds, sampler=sampler, batch_size=...): ...

Each epoch's indices are a pure function of (seed + epoch): the generator is re-seeded in `__iter__`, so a run
resumed at epoch e draws exactly what an uninterrupted run draws, and no sampler state needs saving beyond the
epoch number (no `state_dict`). Resume happens at epoch boundaries.

Under DDP every rank computes the same global draw and keeps every `num_replicas`-th index starting at `rank`
(the global draw is padded by wrapping around to a multiple of `num_replicas`, like DistributedSampler), so the
epoch covers the same number of samples as one process.

Labels come from `dataset_labels`, which reads a `.labels` array and looks through `Subset`/`ConcatDataset`
without loading a single image.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Sampler, Subset

from medclf.data.splits import split_strata
from medclf.errors import ConfigError, DataError
from medclf.registry import Registry


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """Integer class labels of `dataset`, one per item, without iterating it.

    Reads `dataset.labels` (the contract of our datasets), indexes the parent's labels for
    `torch.utils.data.Subset` (recursively) and concatenates for `ConcatDataset` -- the two wrappers on which
    torchsampler's ImbalancedDatasetSampler reads wrong labels or falls back to loading every image.
    """
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    if isinstance(dataset, ConcatDataset):
        return np.concatenate([dataset_labels(d) for d in dataset.datasets])
    labels = getattr(dataset, "labels", None)
    if labels is None or callable(labels):
        raise DataError(f"{type(dataset).__name__}: cannot read labels; give the dataset a `.labels` array")
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{type(dataset).__name__}.labels: need a 1-D integer array, got {labels.dtype} {labels.shape}")
    if hasattr(dataset, "__len__") and len(labels) != len(dataset):
        raise DataError(f"{type(dataset).__name__}.labels: {len(labels)} labels for {len(dataset)} items")
    return labels.astype(np.int64, copy=False)


class EpochSampler(Sampler[int]):
    """Base of our samplers: seeded per epoch, split across `num_replicas` ranks; subclasses draw `_global_indices`."""

    def __init__(
        self, dataset: Dataset, num_samples: int | None = None, seed: int = 0, num_replicas: int = 1, rank: int = 0
    ) -> None:
        size = len(dataset)  # type: ignore[arg-type]
        if size == 0:
            raise DataError(f"{type(dataset).__name__}: the dataset is empty, nothing to sample")
        if num_samples is not None and num_samples < 1:
            raise ConfigError(f"sampler: num_samples must be >= 1, got {num_samples}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ConfigError(f"sampler: need 0 <= rank < num_replicas, got rank={rank}, num_replicas={num_replicas}")
        self.dataset_size = size
        self.num_samples = size if num_samples is None else int(num_samples)
        self.seed = int(seed)
        self.epoch = 0
        self.num_replicas = num_replicas
        self.rank = rank

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch to draw; the draw depends only on `seed + epoch`."""
        self.epoch = int(epoch)

    def _global_indices(self, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.num_replicas)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        indices = self._global_indices(generator)
        total = len(self) * self.num_replicas
        if total > len(indices):  # wrap around so every rank yields the same count (DDP needs equal steps)
            indices = torch.cat([indices, indices[: total - len(indices)]])
        return iter(indices[self.rank : total : self.num_replicas].tolist())


class ShuffleSampler(EpochSampler):
    """A seeded `RandomSampler` (without replacement): a fresh permutation each epoch.

    With `num_samples` above the dataset size it chains permutations, as RandomSampler does.
    """

    def _global_indices(self, generator: torch.Generator) -> torch.Tensor:
        rounds = math.ceil(self.num_samples / self.dataset_size)
        perms = [torch.randperm(self.dataset_size, generator=generator) for _ in range(rounds)]
        return torch.cat(perms)[: self.num_samples]


def sampling_classes(dataset: Dataset) -> np.ndarray:
    """The class each item is balanced by: its label, or for a multilabel dataset (`task == "multilabel"`) its
    rarest present label, K for an image with none (medclf.tasks.rarest_label): a rare finding is then drawn
    as often as a common one, and its images bring their other findings along."""
    return split_strata(dataset_labels(dataset), getattr(dataset, "task", None), getattr(dataset, "num_labels", 0))


class BalancedSampler(EpochSampler):
    """Draws with replacement with weight 1 / count(class), so each class is equally likely per draw (the class
    of `sampling_classes`).

    Same weighting as torchsampler's ImbalancedDatasetSampler, with labels from `dataset_labels` and an explicit
    generator. Rare-class images repeat within an epoch and common-class images are skipped; the epoch length is
    `num_samples` (default: the dataset size).
    """

    def __init__(
        self, dataset: Dataset, num_samples: int | None = None, seed: int = 0, num_replicas: int = 1, rank: int = 0
    ) -> None:
        super().__init__(dataset, num_samples, seed, num_replicas, rank)
        labels = sampling_classes(dataset)
        _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        self.weights = torch.as_tensor(1.0 / counts[inverse], dtype=torch.float64)

    def _global_indices(self, generator: torch.Generator) -> torch.Tensor:
        return torch.multinomial(self.weights, self.num_samples, replacement=True, generator=generator)


SamplerFactory = Callable[..., EpochSampler]
SAMPLERS: Registry[SamplerFactory] = Registry("sampler", field="data.sampler", error=ConfigError)
SAMPLERS.register("shuffle", ShuffleSampler)
SAMPLERS.register("balanced", BalancedSampler)


def list_samplers() -> list[str]:
    return SAMPLERS.names()


def create_sampler(
    name: str,
    dataset: Dataset,
    num_samples: int | None = None,
    seed: int = 0,
    num_replicas: int = 1,
    rank: int = 0,
) -> EpochSampler:
    """Build the sampler `name` over `dataset`; call `set_epoch(epoch)` before each epoch."""
    return SAMPLERS.lookup(name)(dataset, num_samples=num_samples, seed=seed, num_replicas=num_replicas, rank=rank)
