"""Patient-grouped stratified splits, k-way partitions and the leakage audit."""

from __future__ import annotations

import time

import numpy as np
import pytest

from medclf.data.rsna import read_rsna_labels
from medclf.data.splits import leakage_audit, partition_indices, split_patients


def _grouped_example():
    """10 positive patients with 2 images each, then 10 negative patients with 1 image each."""
    groups = [f"p{i}" for i in range(10) for _ in range(2)] + [f"n{i}" for i in range(10)]
    labels = [1] * 20 + [0] * 10
    return np.array(labels), np.array(groups)


def test_split_is_patient_grouped_and_stratified():
    labels, groups = _grouped_example()
    splits = split_patients(labels, groups, val=0.1, test=0.1, seed=0)
    for patient in set(groups):
        assert len(set(splits[groups == patient])) == 1
    # per class: round(10 * 0.1) = 1 patient in test, 1 in val, 8 in train
    for split, n_images in (("test", 3), ("val", 3), ("train", 24)):
        chosen = splits == split
        assert chosen.sum() == n_images
        assert len(set(groups[chosen & (labels == 1)])) == (8 if split == "train" else 1)
        assert len(set(groups[chosen & (labels == 0)])) == (8 if split == "train" else 1)
    audit = leakage_audit(groups, splits)
    assert audit == {"ok": True, "patients_in_several_splits": [], "n_patients": {"train": 16, "val": 2, "test": 2}}


def test_split_is_seeded():
    labels, groups = _grouped_example()
    a = split_patients(labels, groups, seed=0)
    assert (a == split_patients(labels, groups, seed=0)).all()
    assert any((a != split_patients(labels, groups, seed=s)).any() for s in (1, 2, 3))


def test_tiny_sets_still_get_val_and_test_and_zero_fractions_are_honoured():
    labels, groups = np.array([1, 0, 0, 0, 0]), np.array(list("abcde"))
    splits = split_patients(labels, groups, val=0.1, test=0.1, seed=0)
    assert (splits == "val").sum() == 1 and (splits == "test").sum() == 1
    assert splits[0] == "train"  # the lone positive stays in train; the fillers come from the larger class
    no_val = split_patients(labels, groups, val=0.0, test=0.2, seed=0)
    assert (no_val == "val").sum() == 0 and (no_val == "test").sum() == 1
    with pytest.raises(ValueError):
        split_patients(labels, groups, val=0.6, test=0.5)


def test_leakage_audit_names_the_leaking_patient():
    audit = leakage_audit(["a", "a", "b", "c"], ["train", "test", "train", "val"])
    assert audit == {"ok": False, "patients_in_several_splits": ["a"], "n_patients": {"train": 2, "val": 1, "test": 1}}


def test_partition_indices_disjoint_grouped_balanced():
    labels, groups = _grouped_example()
    parts = partition_indices(labels, groups, k=3, seed=0)
    joined = np.sort(np.concatenate(parts))
    np.testing.assert_array_equal(joined, np.arange(len(labels)))
    owners = {}
    for k, part in enumerate(parts):
        for g in set(groups[part]):
            assert owners.setdefault(g, k) == k  # a patient sits in one part only
    positives = [int((labels[p] == 1).sum()) for p in parts]  # 10 patients x 2 images over 3 parts
    negatives = [int((labels[p] == 0).sum()) for p in parts]
    assert sorted(positives) == [6, 6, 8] and sorted(negatives) == [3, 3, 4]
    assert [len(p) for p in partition_indices(labels, groups, k=3, seed=0)] == [len(p) for p in parts]


def test_full_rsna_labels_split_fast(shared):
    root = shared("rsna-labels-full")
    per_patient, report = read_rsna_labels(root / "stage_2_train_labels.csv", root / "stage_2_detailed_class_info.csv")
    assert report.ok and len(per_patient) == 26684 and int(per_patient["target"].sum()) == 6012
    assert int(per_patient["boxes"].map(len).sum()) == 30227 - (26684 - 6012)  # one row per box for positives
    labels, groups = per_patient["target"].to_numpy(), per_patient.index.to_numpy()
    start = time.perf_counter()
    splits = split_patients(labels, groups, val=0.1, test=0.1, seed=0)
    split_s = time.perf_counter() - start
    start = time.perf_counter()
    audit = leakage_audit(groups, splits)
    audit_s = time.perf_counter() - start
    print(f"\nsplit of 26,684 patients: {split_s * 1000:.1f} ms; leakage audit: {audit_s * 1000:.1f} ms")
    assert split_s < 2.0 and audit["ok"]
    # per class 6012 -> 601 test + 601 val; 20672 -> 2067 test + 2067 val
    assert audit["n_patients"] == {"train": 21348, "val": 2668, "test": 2668}
    for split in ("train", "val", "test"):
        assert abs(labels[splits == split].mean() - 6012 / 26684) < 0.001
    parts = partition_indices(labels, groups, k=5, seed=0)
    assert sorted(len(p) for p in parts) == [5336, 5337, 5337, 5337, 5337]
    assert all(abs(labels[p].mean() - 6012 / 26684) < 0.001 for p in parts)
