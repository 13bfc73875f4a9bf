"""Patient-grouped, label-stratified, seeded splits, k-way partitions, and the leakage audit.

Written by hand rather than with scikit-learn: `StratifiedGroupKFold` makes k equal folds (not arbitrary
val/test fractions) and loops over groups in Python, while a per-stratum shuffle of patients gives exact
fractions per class and splits the full RSNA label set (26,684 patients) in milliseconds.

A patient's stratum is its most frequent label (ties -> the lower index); all of a patient's images go to
the same split. Fractions count patients, which equal images for RSNA (one image per patient).

Multi-label sets (bit masks, medclf.tasks) are stratified by each image's rarest present label
(`split_strata`), so every label, however rare, lands in each split. That is the first step of iterative
stratification (Sechidis et al. 2011) and only an approximation of it: the other labels' proportions follow
by chance, not by construction.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from medclf.labelsets import coding

SPLITS = ("train", "val", "test")


def split_strata(labels: Sequence[int], task: str | None = None, n_labels: int = 0) -> np.ndarray:
    """What `split_patients` / `partition_indices` stratify on: the labels, or for a multilabel task (bit
    masks of `n_labels` labels) each sample's rarest present label, `n_labels` for none (tasks.rarest_label)."""
    labels = np.asarray(labels, dtype=np.int64)
    return coding(task).strata(labels, n_labels)


def _patient_strata(labels: np.ndarray, groups: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(patient code per sample, unique patients, stratum per patient)."""
    codes, uniques = pd.factorize(pd.Series(groups, dtype=object), sort=True)
    # labels as sorted codes: the same order and ties as the values, without a column per possible value (raw
    # bit masks would need 2**K of them)
    label_codes, values = pd.factorize(np.asarray(labels, dtype=np.int64), sort=True)
    counts = np.zeros((len(uniques), max(len(values), 1)), dtype=np.int64)
    np.add.at(counts, (codes, label_codes), 1)
    return codes, np.asarray(uniques), counts.argmax(axis=1)  # argmax takes the first maximum: lower index


def _round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


def split_patients(
    labels: Sequence[int], groups: Sequence[Any], val: float = 0.1, test: float = 0.1, seed: int = 0
) -> np.ndarray:
    """Split names ('train'|'val'|'test') per sample; patients never straddle splits.

    In each stratum the patients are shuffled with `seed`, the first round(n * test) go to test, the next
    round(n * val) to val, the rest to train. If rounding leaves a requested split empty while patients
    remain, one patient of the largest stratum is moved there so that val/test exist on tiny datasets.
    """
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError(f"val={val} and test={test} must be in [0, 1) with val + test < 1")
    labels = np.asarray(labels, dtype=np.int64)
    codes, patients, strata = _patient_strata(labels, groups)
    rng = np.random.default_rng(seed)
    patient_split = np.zeros(len(patients), dtype=np.int8)  # 0 train, 1 val, 2 test
    for stratum in np.unique(strata):
        members = rng.permutation(np.flatnonzero(strata == stratum))
        n_test = _round_half_up(len(members) * test)
        n_val = _round_half_up(len(members) * val)
        patient_split[members[:n_test]] = 2
        patient_split[members[n_test : n_test + n_val]] = 1
    for code, frac in ((2, test), (1, val)):
        _ensure_nonempty(patient_split, strata, code, frac, rng)
    return np.asarray(SPLITS, dtype=object)[patient_split[codes]]


def _ensure_nonempty(patient_split: np.ndarray, strata: np.ndarray, code: int, frac: float, rng: Any) -> None:
    if frac <= 0 or (patient_split == code).any():
        return
    train = np.flatnonzero(patient_split == 0)
    if len(train) < 2:
        return
    values, counts = np.unique(strata[train], return_counts=True)
    pool = train[strata[train] == values[counts.argmax()]]
    patient_split[rng.choice(pool)] = code


def partition_indices(labels: Sequence[int], groups: Sequence[Any], k: int, seed: int = 0) -> list[np.ndarray]:
    """k disjoint, stratified, patient-grouped parts covering every sample (sorted sample indices per part).

    Patients of each stratum are shuffled and dealt to the part holding the fewest samples of that stratum
    (then fewest overall), so parts stay balanced even when patients have several images.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    labels = np.asarray(labels, dtype=np.int64)
    codes, patients, strata = _patient_strata(labels, groups)
    sizes = np.bincount(codes, minlength=len(patients))
    rng = np.random.default_rng(seed)
    part_of = np.empty(len(patients), dtype=np.int64)
    totals = np.zeros(k, dtype=np.int64)
    for stratum in np.unique(strata):
        members = rng.permutation(np.flatnonzero(strata == stratum))
        in_stratum = np.zeros(k, dtype=np.int64)
        start = int(rng.integers(k))  # rotate tie-breaking so part 0 does not always get the remainder
        order = np.roll(np.arange(k), -start)
        for patient in members:
            best = order[np.lexsort((totals[order], in_stratum[order]))[0]]
            part_of[patient] = best
            in_stratum[best] += sizes[patient]
            totals[best] += sizes[patient]
    sample_part = part_of[codes]
    return [np.flatnonzero(sample_part == p) for p in range(k)]


def leakage_audit(patient_ids: Sequence[Any], splits: Sequence[str]) -> dict[str, Any]:
    """{'ok', 'patients_in_several_splits' (sorted), 'n_patients' {split: n}} as cache.json records it."""
    patients, names = pd.factorize(pd.Series(patient_ids, dtype=object).astype(str), sort=True)
    split_code = pd.Categorical(list(splits), categories=list(SPLITS)).codes.astype(np.int64)
    if (split_code < 0).any():
        raise ValueError(f"unknown split values {sorted(set(splits) - set(SPLITS))}; valid: {list(SPLITS)}")
    pairs = np.unique(patients * len(SPLITS) + split_code)  # distinct (patient, split) pairs
    per_patient = np.bincount(pairs // len(SPLITS), minlength=len(names))
    per_split = np.bincount(pairs % len(SPLITS), minlength=len(SPLITS))
    leaked = [str(p) for p in np.asarray(names)[per_patient > 1]]
    return {"ok": not leaked, "patients_in_several_splits": leaked,
            "n_patients": {s: int(per_split[i]) for i, s in enumerate(SPLITS)}}
