"""A torch Dataset over one split of a prepared cache, fetched a batch at a time from the memory map."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medclf.data.cache import Cache


class CacheDataset(Dataset):
    """Rows `indices` of a cache. `labels` is a numpy array so samplers never iterate the images (a bit mask
    per image for a multilabel cache, `task` says which: medclf.tasks)."""

    def __init__(self, cache: Cache, split: str | None = None, indices: Sequence[int] | np.ndarray | None = None):
        self.cache = cache
        if indices is None:
            indices = cache.indices(split) if split else np.arange(len(cache.manifest))
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = cache.manifest["label"].to_numpy(dtype=np.int64)[self.indices]
        self.ids = cache.manifest["id"].astype(str).to_numpy()[self.indices]
        self.task = cache.task
        self.num_labels = len(cache.label_names)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        row = self.indices[i]
        return torch.from_numpy(np.array(self.cache.images[row])), int(self.labels[i]), int(i)

    def __getitems__(self, items: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One fancy-indexed read for the whole batch (the DataLoader calls this when it exists)."""
        items_arr = np.asarray(items, dtype=np.int64)
        rows = self.indices[items_arr]
        order = np.argsort(rows)  # sorted reads are sequential on disk
        images = np.empty((len(rows),) + self.cache.images.shape[1:], dtype=np.uint8)
        images[order] = self.cache.images[rows[order]]
        return torch.from_numpy(images), torch.from_numpy(self.labels[items_arr]), torch.from_numpy(items_arr)


def seeded_subset(dataset: CacheDataset, limit: int | None, seed: int) -> CacheDataset:
    """At most `limit` items of `dataset`, drawn without replacement (seeded), in cache order."""
    if limit is None or len(dataset) <= limit:
        return dataset
    pick = np.sort(np.random.default_rng(seed).choice(len(dataset), size=limit, replace=False))
    return CacheDataset(dataset.cache, indices=dataset.indices[pick])


def _collate_batch(batch):
    # __getitems__ already returns a collated batch
    return batch


def make_loader(
    dataset: CacheDataset,
    batch_size: int,
    sampler=None,
    workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader that yields `(uint8 images B x S x S, labels B, positions B)` batches."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate_batch,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        drop_last=False,
    )
