"""Samplers: balance, determinism per (seed, epoch), labels through Subset/ConcatDataset, DDP shares."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from medclf.data.samplers import (
    SAMPLERS,
    BalancedSampler,
    ShuffleSampler,
    create_sampler,
    dataset_labels,
    list_samplers,
)
from medclf.errors import ConfigError, DataError


class LabelledDataset(Dataset):
    """Stand-in for our CacheDataset: the contract is a `.labels` integer numpy array, one per item."""

    def __init__(self, labels: list[int] | np.ndarray) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        self.items_loaded = 0  # counts __getitem__ calls: reading labels must not load images

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[int, int]:
        self.items_loaded += 1
        return i, int(self.labels[i])


def imbalanced(n_neg: int = 900, n_pos: int = 100) -> LabelledDataset:
    return LabelledDataset([0] * n_neg + [1] * n_pos)


def draw(sampler, epoch: int = 0) -> list[int]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_registry() -> None:
    assert list_samplers() == ["balanced", "shuffle"]
    assert SAMPLERS["shuffle"] is ShuffleSampler and SAMPLERS["balanced"] is BalancedSampler
    with pytest.raises(ConfigError, match=r"unknown sampler 'weighted'; valid: balanced, shuffle"):
        create_sampler("weighted", imbalanced())


def test_balanced_sampler_draws_classes_equally() -> None:
    ds = imbalanced()
    sampler = create_sampler("balanced", ds, num_samples=20_000, seed=0)
    idx = np.array(draw(sampler))
    # binomial sd = sqrt(0.25 / 20000) = 0.0035; 0.02 is more than 5 sd
    assert abs(ds.labels[idx].mean() - 0.5) < 0.02
    # with replacement: all 100 positives appear, each about 10000 / 100 = 100 times
    positive_counts = np.bincount(idx[ds.labels[idx] == 1], minlength=1000)[900:]
    assert (positive_counts > 50).all() and (positive_counts < 150).all()
    assert ds.items_loaded == 0


def test_balanced_default_epoch_is_dataset_size() -> None:
    ds = imbalanced()
    idx = draw(create_sampler("balanced", ds, seed=1))
    assert len(idx) == 1000
    assert 0.44 < ds.labels[idx].mean() < 0.56  # sd 0.016 at n = 1000
    assert min(idx) >= 0 and max(idx) < 1000


def test_shuffle_is_a_permutation() -> None:
    sampler = create_sampler("shuffle", imbalanced(), seed=0)
    idx = draw(sampler)
    assert sorted(idx) == list(range(1000))
    assert idx != list(range(1000))
    assert len(sampler) == 1000


@pytest.mark.parametrize("name", ["shuffle", "balanced"])
def test_same_seed_and_epoch_repeat_and_resume(name: str) -> None:
    ds = imbalanced()
    a, b = create_sampler(name, ds, seed=7), create_sampler(name, ds, seed=7)
    assert draw(a, 3) == draw(b, 3)
    assert draw(a, 3) != draw(a, 4)
    assert draw(create_sampler(name, ds, seed=8), 3) != draw(a, 3)
    # uninterrupted run over epochs 0..4 vs a fresh sampler resumed at epoch 4
    uninterrupted = [draw(a, e) for e in range(5)]
    resumed = create_sampler(name, ds, seed=7)
    assert draw(resumed, 4) == uninterrupted[4]
    # iterating twice within one epoch gives the same indices (the generator is re-seeded per __iter__)
    assert list(a) == list(a)


def test_labels_through_subset_and_concat() -> None:
    base = LabelledDataset([0, 1, 2, 0, 1, 2, 0, 1])
    sub = Subset(base, [7, 2, 5])
    assert dataset_labels(sub).tolist() == [1, 2, 2]
    nested = Subset(sub, [2, 0])
    assert dataset_labels(nested).tolist() == [2, 1]
    other = LabelledDataset([5, 6])
    concat = ConcatDataset([other, sub, Subset(ConcatDataset([base, other]), [8, 0])])
    assert dataset_labels(concat).tolist() == [5, 6, 1, 2, 2, 5, 0]
    assert base.items_loaded == 0 and other.items_loaded == 0


def test_balanced_on_subset_indexes_the_subset() -> None:
    base = imbalanced()
    # a subset with 300 negatives then 30 positives, in a scrambled order
    chosen = np.r_[np.arange(0, 300), np.arange(900, 930)][::-1].copy()
    sub = Subset(base, chosen.tolist())
    idx = draw(create_sampler("balanced", sub, num_samples=10_000, seed=0))
    assert max(idx) < len(sub)
    sub_labels = dataset_labels(sub)
    assert abs(sub_labels[idx].mean() - 0.5) < 0.03  # sd 0.005
    assert sub_labels[:30].tolist() == [1] * 30  # reversed: subset position 0 is base item 929
    # through a DataLoader the items loaded carry the labels dataset_labels predicted for the drawn positions
    sampler = create_sampler("balanced", sub, num_samples=16, seed=0)
    loaded = [batch for batch in DataLoader(sub, sampler=sampler, batch_size=8)]
    base_ids = torch.cat([b[0] for b in loaded]).numpy()
    loaded_labels = torch.cat([b[1] for b in loaded]).numpy()
    assert base_ids.tolist() == chosen[list(sampler)].tolist()
    assert loaded_labels.tolist() == sub_labels[list(sampler)].tolist()


def test_two_replicas_split_the_shuffle() -> None:
    ds = imbalanced(90, 10)
    ranks = [draw(create_sampler("shuffle", ds, seed=3, num_replicas=2, rank=r), 2) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 50
    assert set(ranks[0]).isdisjoint(ranks[1])
    assert sorted(ranks[0] + ranks[1]) == list(range(100))
    # rank r takes every 2nd index of the single-process permutation
    single = draw(create_sampler("shuffle", ds, seed=3), 2)
    assert ranks[0] == single[0::2] and ranks[1] == single[1::2]


def test_replicas_pad_to_equal_length() -> None:
    ds = LabelledDataset([0, 1, 0, 1, 0])  # 5 items, 2 ranks -> 3 each, one index repeated
    ranks = [draw(create_sampler("balanced", ds, seed=0, num_replicas=2, rank=r)) for r in (0, 1)]
    assert [len(r) for r in ranks] == [3, 3]
    single = draw(create_sampler("balanced", ds, seed=0))
    assert ranks[0] == single[0::2] and ranks[1] == single[1::2] + single[:1]


@pytest.mark.parametrize("name", ["shuffle", "balanced"])
def test_num_samples_sets_epoch_length(name: str) -> None:
    ds = imbalanced(90, 10)
    for n in (7, 250):
        sampler = create_sampler(name, ds, num_samples=n, seed=0)
        assert len(sampler) == n and len(draw(sampler)) == n
    two_ranks = create_sampler(name, ds, num_samples=7, num_replicas=2, rank=1)
    assert len(two_ranks) == 4 and len(draw(two_ranks)) == 4


def test_shuffle_longer_than_dataset_chains_permutations() -> None:
    idx = draw(create_sampler("shuffle", imbalanced(90, 10), num_samples=250, seed=0))
    counts = np.bincount(idx, minlength=100)
    assert counts.min() == 2 and counts.max() == 3 and (counts == 3).sum() == 50


def test_errors() -> None:
    class NoLabels(Dataset):
        def __len__(self) -> int:
            return 3

    with pytest.raises(DataError, match="NoLabels: cannot read labels"):
        create_sampler("balanced", NoLabels())
    bad = LabelledDataset([0, 1])
    bad.labels = np.array([0.5, 1.0])
    with pytest.raises(DataError, match="1-D integer array"):
        dataset_labels(bad)
    with pytest.raises(DataError, match="empty"):
        create_sampler("shuffle", LabelledDataset([]))
    with pytest.raises(ConfigError, match="rank"):
        create_sampler("shuffle", imbalanced(), num_replicas=2, rank=2)
    with pytest.raises(ConfigError, match="num_samples"):
        create_sampler("shuffle", imbalanced(), num_samples=0)


def test_uses_its_own_generator() -> None:
    ds = imbalanced()
    torch.manual_seed(0)
    first = draw(create_sampler("balanced", ds, seed=5))
    torch.manual_seed(123)
    torch.rand(10)
    assert draw(create_sampler("balanced", ds, seed=5)) == first
