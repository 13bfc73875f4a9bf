"""MedMNIST .npz and folder (+ CSV) sources."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medclf.data.cache import Cache
from medclf.data.prepare import prepare_folder, prepare_medmnist
from medclf.errors import DataError


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_medmnist_keeps_its_splits_and_values(tmp_path):
    rng = np.random.default_rng(0)
    train, val = rng.integers(0, 256, (6, 8, 8), dtype=np.uint8), rng.integers(0, 256, (2, 8, 8), dtype=np.uint8)
    npz = _npz(tmp_path / "pneumoniamnist.npz", train_images=train,
               train_labels=np.array([[0], [1], [1], [0], [0], [1]]), val_images=val, val_labels=np.array([[1], [0]]))
    cache = Cache.open(prepare_medmnist(npz, tmp_path / "cache", progress=False))
    np.testing.assert_array_equal(cache.images, np.concatenate([train, val]))  # native size, values untouched
    m = cache.manifest
    assert list(m["split"]) == ["train"] * 6 + ["val"] * 2
    assert list(m["id"][:2]) == ["train-000000", "train-000001"] and (m["patient_id"] == m["id"]).all()
    assert list(m["label"]) == [0, 1, 1, 0, 0, 1, 1, 0]
    assert cache.label_names == ["normal", "pneumonia"] and cache.positive_index == 1
    assert cache.meta["leakage_audit"]["note"].startswith("MedMNIST has no patient ids")
    assert cache.meta["split_counts"] == {"train": {"normal": 3, "pneumonia": 3}, "val": {"normal": 1, "pneumonia": 1}}
    resized = Cache.open(prepare_medmnist(npz, tmp_path / "c16", size=16, progress=False))
    assert resized.images.shape == (8, 16, 16)
    assert abs(resized.images.astype(float).mean() - cache.images.astype(float).mean()) < 2


def test_medmnist_converts_colour(tmp_path):  # multi-label files: tests/data/test_multilabel_sources.py
    colour = np.zeros((2, 4, 4, 3), np.uint8)
    colour[..., 0] = 100  # pure red 100 -> luma 0.299 * 100 = 29.9 -> 30
    npz = _npz(tmp_path / "x.npz", test_images=colour, test_labels=np.array([0, 1]))
    cache = Cache.open(prepare_medmnist(npz, tmp_path / "c2", progress=False))
    assert (np.asarray(cache.images) == 30).all() and set(cache.manifest["split"]) == {"test"}


@pytest.mark.realdata
def test_real_pneumoniamnist(shared, tmp_path):
    npz = shared("pneumoniamnist", "pneumoniamnist_trainval.npz")
    cache = Cache.open(prepare_medmnist(npz, tmp_path / "cache", progress=False))
    assert cache.images.shape == (2698, 28, 28)
    assert {s: sum(c.values()) for s, c in cache.meta["split_counts"].items()} == {"train": 2428, "val": 270}
    with np.load(npz) as data:
        np.testing.assert_array_equal(cache.images[0], data["train_images"][0])
        assert cache.labels("train").sum() == data["train_labels"].sum()


def _folder(tmp_path, write_dicom):
    """12 images (PNG, JPEG, DICOM) of 6 patients, 2 images each; labels by name."""
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(1)
    rows = ["path,label,patient_id"]
    for i in range(12):
        pixels = rng.integers(0, 256, (40, 30), dtype=np.uint8)
        name = ["sub/a{}.png", "b{}.jpg", "c{}.dcm"][i % 3].format(i)
        if name.endswith(".png"):
            Image.fromarray(pixels).save(root / name)
        elif name.endswith(".jpg"):
            Image.fromarray(pixels).save(root / name, quality=95)
        else:
            write_dicom(root / name, pixels)
        rows.append(f"{name},{'pneumonia' if i // 2 % 3 == 0 else 'normal'},patient{i // 2}")
    (root / "unlisted.png").write_bytes((root / "sub" / "a0.png").read_bytes())
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    return root, labels


def test_folder_source_groups_patients(tmp_path, dicom_writer):
    root, labels = _folder(tmp_path, dicom_writer)
    cache = Cache.open(prepare_folder(root, labels, tmp_path / "cache", size=32, val=0.2, test=0.2, workers=1,
                                     progress=False))
    m = cache.manifest
    assert cache.images.shape == (12, 32, 32) and cache.label_names == ["normal", "pneumonia"]
    assert cache.positive_index == 1 and int(m["label"].sum()) == 4
    assert m.groupby("patient_id")["split"].nunique().max() == 1
    assert cache.meta["leakage_audit"]["ok"] and cache.meta["label_check"]["unlisted_files"] == 1
    # 40 x 30 -> 32 x 24 centred: 4 black columns each side
    assert (cache.images[:, :, :4] == 0).all() and (cache.images[:, :, 28:] == 0).all()
    assert m.set_index("id").at["c2.dcm", "patient_id"] == "patient1"


def test_folder_missing_file_and_unknown_positive(tmp_path, dicom_writer):
    root, labels = _folder(tmp_path, dicom_writer)
    (root / "b1.jpg").unlink()
    with pytest.raises(DataError, match=r"labels.csv: 1 labels without images \(e.g. b1.jpg\)"):
        prepare_folder(root, labels, tmp_path / "cache", size=32, progress=False)
    cache = Cache.open(prepare_folder(root, labels, tmp_path / "cache", size=32, skip_missing=True, workers=1,
                                     progress=False))
    assert len(cache.manifest) == 11
    odd = tmp_path / "odd.csv"
    odd.write_text("path,label\nsub/a0.png,cat\nb1.jpg,dog\n")
    with pytest.raises(DataError, match=r"odd.csv: 2 classes \['cat', 'dog'\]; say which is positive with --positive"):
        prepare_folder(root, odd, tmp_path / "c2", size=32, progress=False)


def test_folder_csv_extra_columns_become_manifest_columns(tmp_path, dicom_writer):
    """site (text, '01' stays '01'), sex (fills the manifest's own column) are kept for `evaluate --by`;
    a `split` column would clash with the cache's own, so it is ignored."""
    root, labels = _folder(tmp_path, dicom_writer)
    lines = labels.read_text().splitlines()
    rows = [f"{line},{'01' if i % 2 else '02'},{'' if i == 0 else 'FM'[i % 2]},test"
            for i, line in enumerate(lines[1:])]
    labels.write_text("\n".join([lines[0] + ",site,sex,split"] + rows) + "\n")
    cache = Cache.open(prepare_folder(root, labels, tmp_path / "cache", size=32, val=0.2, test=0.2, workers=1,
                                     progress=False))
    m = cache.manifest.set_index("id")
    assert list(cache.manifest.columns)[-1] == "site" and "split" in m and set(m["split"]) != {"test"}
    assert (m.at["sub/a0.png", "site"], m.at["b1.jpg", "site"]) == ("02", "01")
    assert (m.at["sub/a0.png", "sex"], m.at["b1.jpg", "sex"], m.at["c2.dcm", "sex"]) == ("", "M", "F")
    assert cache.meta["params"]["extra_columns"] == ["site", "sex"]
