"""MedMNIST `.npz` source: `{train,val,test}_{images,labels}`, any subset of the three splits, kept as given.

MedMNIST images are already 8-bit and display-ready, so their values are kept (`norm="none"`); colour sets
are converted to luma because the cache is greyscale. MedMNIST has no patient ids: `patient_id = id`, so the
leakage audit is trivially clean and cannot detect patient overlap between the given splits (cache.json
says so in `leakage_audit.note`).

Labels of shape (N, K) with K > 1 (ChestMNIST: 14 findings) make a multi-label cache: each row's 0/1 values
become a bit mask (medclf.tasks). Label names: `label_names`, else ChestMNIST's 14 (MedMNIST's INFO order) for
a file named like `chestmnist*.npz` with K = 14, else "0".."K-1".
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from medclf.data.folder import resolve_positive
from medclf.data.multilabel import check_names, no_positive
from medclf.data.splits import SPLITS
from medclf.errors import DataError
from medclf.labelsets import encode_multi_hot, label_texts, task_of

# Class names MedMNIST's INFO gives for binary sets we know (indices follow the .npz labels).
KNOWN_NAMES = {"pneumoniamnist": ["normal", "pneumonia"], "breastmnist": ["malignant", "normal, benign"],
               "chestmnist": ["atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule",
                              "pneumonia", "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis",
                              "pleural", "hernia"]}
LEAKAGE_NOTE = "MedMNIST has no patient ids: patient_id = id, so this audit cannot detect patient overlap"


@dataclass
class MedmnistSource:
    images: np.ndarray  # uint8 N x H x W, in split order train, val, test
    items: pd.DataFrame  # id, patient_id, label, label_name, split, boxes, source
    label_names: list[str]
    positive_index: int
    task: str = "binary"  # binary | multiclass | multilabel (medclf.tasks)


def medmnist_source(npz: str | Path, label_names: Sequence[str] | None = None,
                    positive: str | int | None = None) -> MedmnistSource:
    npz = Path(npz)
    if not npz.is_file():
        raise DataError(f"{npz}: file not found")
    try:
        data = np.load(npz, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"{npz}: not a readable .npz ({' '.join(str(err).split())})") from None
    with data:
        splits = [s for s in SPLITS if f"{s}_images" in data.files]
        if not splits:
            raise DataError(f"{npz}: no {{train,val,test}}_images arrays (found {sorted(data.files)})")
        blocks = [_split_block(npz, data, s) for s in splits]
    if len({b[1].shape[1:] for b in blocks}) > 1:
        raise DataError(f"{npz}: the splits' label arrays differ in shape ({[b[1].shape for b in blocks]})")
    images = np.concatenate([b[0] for b in blocks])
    labels = np.concatenate([b[1] for b in blocks])
    split = np.concatenate([[s] * len(b[0]) for s, b in zip(splits, blocks)])
    local = np.concatenate([np.arange(len(b[0])) for b in blocks])
    if labels.ndim == 2:
        labels, names, task, positive_index = _multilabel(npz, labels, label_names, positive)
    else:
        names, task = _names(npz, labels, label_names), None
        if labels.max() >= len(names):
            raise DataError(f"{npz}: label {int(labels.max())} but only {len(names)} class names {names}")
        positive_index = resolve_positive(names, positive, npz)
    label_name = label_texts(labels, names, task)
    ids = [f"{s}-{i:06d}" for s, i in zip(split, local)]
    items = pd.DataFrame({
        "id": ids, "patient_id": ids, "label": labels, "label_name": label_name, "split": split,
        "boxes": [[] for _ in ids], "source": [f"{npz.name}#{s}_images[{i}]" for s, i in zip(split, local)],
    })
    return MedmnistSource(images=images, items=items, label_names=names, positive_index=positive_index,
                          task=task_of(names, task))


def _multilabel(npz: Path, labels: np.ndarray, given: Sequence[str] | None,
                positive: str | int | None) -> tuple[np.ndarray, list[str], str, int]:
    """N x K 0/1 labels -> (bit masks, label names, "multilabel", positive_index 0)."""
    if not np.isin(labels, (0, 1)).all():
        raise DataError(f"{npz}: multi-label labels must be 0 or 1, found {np.unique(labels)[:5].tolist()}")
    k = labels.shape[1]
    known = KNOWN_NAMES["chestmnist"] if "chestmnist" in npz.name.lower() else []
    names = list(given) if given else known if len(known) == k else [str(i) for i in range(k)]
    if len(names) != k:
        raise DataError(f"{npz}: {k} labels per image but {len(names)} label names {names}")
    names = check_names(names, str(npz))
    return encode_multi_hot(labels), names, "multilabel", no_positive(positive, npz)


def _split_block(npz: Path, data: np.lib.npyio.NpzFile, split: str) -> tuple[np.ndarray, np.ndarray]:
    if f"{split}_labels" not in data.files:
        raise DataError(f"{npz}: {split}_images without {split}_labels")
    images, labels = data[f"{split}_images"], data[f"{split}_labels"]
    multi = labels.ndim == 2 and labels.shape[1] > 1  # (N, K): multi-label; (N,) or (N, 1): one label
    labels = labels.astype(np.int64) if multi else labels.reshape(-1).astype(np.int64)
    if len(labels) != len(images):
        raise DataError(f"{npz}: {len(images)} {split} images but {len(labels)} labels")
    if labels.size and labels.min() < 0:
        raise DataError(f"{npz}: negative label in {split}_labels")
    return _to_grey(npz, split, images), labels


def _to_grey(npz: Path, split: str, images: np.ndarray) -> np.ndarray:
    if images.ndim == 4 and images.shape[-1] == 3:
        luma = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as PIL 'L'
        images = np.clip(np.rint(luma), 0, 255)
    if images.ndim != 3:
        raise DataError(f"{npz}: {split}_images has shape {images.shape}; expected N x H x W (or N x H x W x 3)")
    if images.dtype != np.uint8 and (images.min() < 0 or images.max() > 255):
        raise DataError(f"{npz}: {split}_images values outside 0..255")
    return images.astype(np.uint8)


def _names(npz: Path, labels: np.ndarray, given: Sequence[str] | None) -> list[str]:
    if given:
        return list(given)
    for key, names in KNOWN_NAMES.items():
        if key in npz.name.lower():
            return list(names)
    return [str(i) for i in range(max(int(labels.max()) + 1, 2))]


def resize_images(images: np.ndarray, size: int | None, progress: bool = False) -> np.ndarray:
    """Pad to square / resize already-8-bit arrays, in-process (a 28 px image takes microseconds)."""
    from tqdm import tqdm

    from medclf.data.imageio import fit_square

    if (size is None or size == images.shape[1]) and images.shape[1] == images.shape[2]:
        return np.ascontiguousarray(images)
    side = size or max(images.shape[1:])
    out = np.empty((len(images), side, side), dtype=np.uint8)
    for i in tqdm(range(len(images)), unit="img", desc="resize", disable=not progress, file=sys.stderr):
        out[i] = fit_square(images[i], size)
    return out
