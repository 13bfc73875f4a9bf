"""The three task types' names and how their truths are stored (the bottom layer: data, evaluation and the
Task objects of `medclf.tasks` read it; nothing here imports medclf beyond this module).

- `binary`: two classes, one of them positive (softmax over 2 logits), the seed's task.
- `multiclass`: K > 2 classes, one per image (softmax over K logits).
- `multilabel`: K findings, any subset per image, none included (a sigmoid per logit).

A cache's `task` is written by `prepare` into cache.json and copied into the run's contract; caches and
checkpoints made before the field read as binary (K = 2) or multiclass (K > 2).

A multi-label truth is one int64 per image, a bit mask: bit k is set when finding k is present, so the manifest's
`label` column, the datasets and the samplers keep one integer per image (K <= 62). `label_name` holds the
present findings joined by `|` (the ChestX-ray14 `Finding Labels` convention), `NO_FINDING` for the empty set.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

TASKS = ("binary", "multiclass", "multilabel")
NO_FINDING = "No Finding"
MAX_LABELS = 62  # bits of a non-negative int64


def task_of(label_names: Sequence[str], declared: str | None = None) -> str:
    """The task a cache or contract declares, else the one its class count implies."""
    if declared:
        if declared not in TASKS:
            raise ValueError(f"task {declared!r}: valid: {', '.join(TASKS)}")
        return declared
    return "binary" if len(label_names) == 2 else "multiclass"


def encode_multi_hot(multi_hot: np.ndarray) -> np.ndarray:
    """N x K 0/1 matrix -> N bit masks (int64)."""
    multi_hot = np.asarray(multi_hot)
    if multi_hot.ndim != 2 or multi_hot.shape[1] > MAX_LABELS:
        raise ValueError(f"multi-hot labels must be N x K with K <= {MAX_LABELS}, got {multi_hot.shape}")
    weights = np.left_shift(np.int64(1), np.arange(multi_hot.shape[1], dtype=np.int64))
    return (multi_hot.astype(np.int64) != 0).astype(np.int64) @ weights


def multi_hot(masks: Iterable[int] | np.ndarray, k: int) -> np.ndarray:
    """N bit masks -> N x K uint8 0/1 matrix."""
    masks = np.asarray(masks, dtype=np.int64).reshape(-1)
    return ((masks[:, None] >> np.arange(k, dtype=np.int64)) & 1).astype(np.uint8)


def label_set_name(mask: int, label_names: Sequence[str]) -> str:
    """'Effusion|Mass' for a mask; `NO_FINDING` when no bit is set."""
    present = [name for i, name in enumerate(label_names) if (int(mask) >> i) & 1]
    return "|".join(present) if present else NO_FINDING


def label_texts(labels: Iterable[int], label_names: Sequence[str], task: str | None) -> list[str]:
    """The manifest's `label_name` of each label: the class's name, or for a multilabel task the findings of
    each bit mask (`label_set_name`)."""
    return coding(task).texts(labels, label_names)


def check_masks(masks: np.ndarray, k: int) -> None:
    """Every mask uses only the bits of K labels."""
    masks = np.asarray(masks, dtype=np.int64)
    if masks.size and (masks.min() < 0 or masks.max() >= (1 << k)):
        raise ValueError(f"multi-label masks must be in [0, 2**{k}), got {int(masks.min())}..{int(masks.max())}")


def label_counts(masks: np.ndarray, k: int) -> np.ndarray:
    """Images holding each label (K ints)."""
    return multi_hot(masks, k).sum(axis=0).astype(np.int64)


def rarest_label(masks: np.ndarray, k: int) -> np.ndarray:
    """Per image, the index of its rarest present label (by count among `masks`), or K when it has none.

    This is the stratum a multi-label image is split and balanced-sampled by: stratifying on the rarest label
    first is the step iterative stratification (Sechidis et al. 2011) starts from, and it keeps every label,
    however rare, in each split. Ties go to the lower index.
    """
    hot = multi_hot(masks, k).astype(bool)
    counts = hot.sum(axis=0)
    order = np.argsort(counts, kind="stable")  # rarest first
    rank_of = np.empty(k, dtype=np.int64)
    rank_of[order] = np.arange(k)
    ranks = np.where(hot, rank_of[None, :], k)
    best = ranks.min(axis=1) if k else np.full(len(hot), k)
    return np.where(best < k, order[np.minimum(best, k - 1)], k).astype(np.int64)


class ClassIndices:
    """The truth of a single-label task (binary, multiclass): one class index per image."""

    lists_empty = False  # a data summary leaves out a class a split does not hold

    @staticmethod
    def texts(labels: Iterable[int], label_names: Sequence[str]) -> list[str]:
        return [label_names[int(i)] for i in labels]

    @staticmethod
    def counts(labels: np.ndarray, k: int) -> np.ndarray:
        """Images of each class (K ints)."""
        return np.bincount(np.asarray(labels, dtype=np.int64), minlength=k)

    @staticmethod
    def strata(labels: np.ndarray, k: int) -> np.ndarray:
        """What splits and samplers stratify on: the class itself."""
        return np.asarray(labels, dtype=np.int64)

    @staticmethod
    def check(labels: np.ndarray, k: int) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= k):
            raise ValueError(f"labels must be in [0, {k}), got {sorted(set(labels.tolist()))}")


class BitMasks:
    """The truth of a multilabel task: one bit mask per image (module docstring)."""

    lists_empty = True  # a data summary lists every label, held or not

    @staticmethod
    def texts(labels: Iterable[int], label_names: Sequence[str]) -> list[str]:
        return [label_set_name(m, label_names) for m in labels]

    counts = staticmethod(label_counts)
    strata = staticmethod(rarest_label)
    check = staticmethod(check_masks)


# how each task stores its truth; a name not here (None: a cache older than the `task` field) is single-label
CODINGS: dict[str, type[ClassIndices] | type[BitMasks]] = {"binary": ClassIndices, "multiclass": ClassIndices,
                                                           "multilabel": BitMasks}


def coding(task: str | None) -> type[ClassIndices] | type[BitMasks]:
    """The truth coding of task `task` (ClassIndices for None)."""
    return CODINGS.get(task or "binary", ClassIndices)
