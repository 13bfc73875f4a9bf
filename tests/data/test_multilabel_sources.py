"""Multi-label sources: the synthetic multi-label cache, folder CSVs (`A|B` and 0/1 columns), MedMNIST (N, K)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medclf.data.cache import Cache
from medclf.data.prepare import prepare_folder, prepare_medmnist
from medclf.errors import DataError
from medclf.data.synthetic import SHAPES, write_synthetic_multilabel
from medclf.tasks import label_counts, multi_hot


def test_synthetic_multilabel_cache(tmp_path):
    cache = Cache.open(write_synthetic_multilabel(tmp_path / "c", n=200, size=48, seed=0))
    assert cache.task == "multilabel" and cache.label_names == ["disc", "square", "bar"] == list(SHAPES)
    assert cache.images.shape == (200, 48, 48) and cache.images.dtype == np.uint8
    masks = cache.labels()
    hot = multi_hot(masks, 3)
    per_image = hot.sum(axis=1)
    assert {0, 1, 2}.issubset(set(per_image)) and 0.25 < hot.mean() < 0.45  # p = 0.35, independent
    counts = cache.meta["split_counts"]
    for split in ("train", "val", "test"):
        assert all(counts[split][name] >= 1 for name in SHAPES), counts
        assert list(label_counts(cache.labels(split), 3)) == [counts[split][n] for n in SHAPES]
    expected = ["|".join(n for n, h in zip(SHAPES, row) if h) or "No Finding" for row in hot]
    assert cache.manifest["label_name"].tolist() == expected
    assert cache.meta["synthetic"]["generator"].endswith("write_synthetic_multilabel")
    assert cache.meta["leakage_audit"]["ok"] and cache.positive_index == 0
    # a shape is bright on a dark background: images with no finding are darker than those with three
    assert cache.images[per_image == 0].mean() < cache.images[per_image >= 2].mean() - 5


def test_synthetic_multilabel_is_deterministic(tmp_path):
    a = Cache.open(write_synthetic_multilabel(tmp_path / "a", n=40, seed=3))
    b = Cache.open(write_synthetic_multilabel(tmp_path / "b", n=40, seed=3))
    assert a.meta["content_hash"] == b.meta["content_hash"]


# ------------------------------------------------------------------------------------------------ folder CSVs

def _pngs(root, names):
    root.mkdir(exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(np.full((8, 8), (37 * i) % 256, np.uint8)).save(root / name)
    return root


def _csv(path, header, rows):
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


SETS = {"a.png": "Effusion|Mass", "b.png": "No Finding", "c.png": "", "d.png": "Mass", "e.png": "Atelectasis",
        "f.png": "no finding", "g.png": "Effusion", "h.png": "Atelectasis|Effusion|Mass"}


@pytest.fixture()
def set_folder(tmp_path):
    root = _pngs(tmp_path / "imgs", SETS)
    rows = [f"{name},{label},p{i}" for i, (name, label) in enumerate(SETS.items())]
    return root, _csv(tmp_path / "labels.csv", "path,label,patient_id", rows)


def _prepare(root, labels, out, **kw):
    return Cache.open(prepare_folder(root, labels, out, size=8, val=0.25, test=0.25, workers=1, progress=False,
                                     **kw))


def _masks(cache):
    return dict(zip(cache.manifest["id"], cache.manifest["label"]))


def test_folder_label_sets_make_a_multilabel_cache(set_folder, tmp_path, capsys):
    root, labels = set_folder
    cache = _prepare(root, labels, tmp_path / "cache")
    assert cache.task == "multilabel" and cache.meta["label_mode"] == "multilabel"
    assert cache.label_names == ["Atelectasis", "Effusion", "Mass"] and cache.positive_index == 0
    assert _masks(cache) == {"a.png": 6, "b.png": 0, "c.png": 0, "d.png": 4, "e.png": 1, "f.png": 0, "g.png": 2,
                             "h.png": 7}
    names = dict(zip(cache.manifest["id"], cache.manifest["label_name"]))
    assert names["a.png"] == "Effusion|Mass" and names["c.png"] == names["f.png"] == "No Finding"
    assert names["h.png"] == "Atelectasis|Effusion|Mass"
    totals = {n: sum(c[n] for c in cache.meta["split_counts"].values()) for n in cache.label_names}
    assert totals == {"Atelectasis": 2, "Effusion": 3, "Mass": 3}
    sizes = cache.manifest["split"].value_counts()
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"8 images (train {sizes['train']}, val {sizes['val']}, test {sizes['test']}; " \
           "images per label: Atelectasis 2, Effusion 3, Mass 3)" in line
    assert cache.meta["params"]["task"] == "multilabel" and list(cache.manifest.columns[11:]) == []


def test_folder_label_names_order_and_declared_task(set_folder, tmp_path):
    root, labels = set_folder
    cache = _prepare(root, labels, tmp_path / "c1", label_names=["Mass", "Effusion", "Atelectasis"])
    assert cache.label_names == ["Mass", "Effusion", "Atelectasis"]
    assert _masks(cache)["a.png"] == 3 and _masks(cache)["e.png"] == 4
    assert cache.manifest.set_index("id").at["a.png", "label_name"] == "Mass|Effusion"
    single = _csv(tmp_path / "single.csv", "path,label", ["a.png,Mass", "b.png,No Finding", "d.png,Effusion"])
    cache = _prepare(root, single, tmp_path / "c2", task="multilabel")
    assert cache.task == "multilabel" and cache.label_names == ["Effusion", "Mass"]
    assert _masks(cache) == {"a.png": 2, "b.png": 0, "d.png": 1}


def test_folder_label_set_problems_name_the_line(set_folder, tmp_path):
    root, _ = set_folder
    bad = _csv(tmp_path / "bad.csv", "path,label", ["a.png,Mass|Nodule", "b.png,No Finding|Mass", "d.png,Mass"])
    with pytest.raises(DataError) as err:
        _prepare(root, bad, tmp_path / "c", label_names=["Mass", "Effusion"])
    text = str(err.value)
    assert text.startswith(f"{bad}: 2 malformed rows (e.g. bad.csv:2: label 'Mass|Nodule': 'Nodule' is not one of "
                           "['Mass', 'Effusion']; bad.csv:3: label 'No Finding|Mass': names No Finding with findings)")
    assert "\n" not in text and not (tmp_path / "c").exists()
    with pytest.raises(DataError, match="--positive applies to binary sets"):
        _prepare(root, bad, tmp_path / "c", positive="Mass")
    with pytest.raises(DataError, match=r"--task multiclass but the labels hold 2 classes"):
        _prepare(root, _csv(tmp_path / "two.csv", "path,label", ["a.png,x", "b.png,y"]), tmp_path / "c",
                 task="multiclass", positive="x")


COLUMNS = {"a.png": ("1", "0", "", "s1"), "b.png": ("1.0", "-1", "0.0", "s2"), "c.png": ("0", "0", "1", "s1"),
           "d.png": ("", "", "", "s2"), "e.png": ("-1.0", "1", "1", "s1"), "f.png": ("0", "1", "0", "s2")}


@pytest.fixture()
def column_folder(tmp_path):
    root = _pngs(tmp_path / "imgs", COLUMNS)
    rows = [f"{name},{','.join(v)}" for name, v in COLUMNS.items()]
    return root, _csv(tmp_path / "chex.csv", "path,A,B,C,site", rows)


@pytest.mark.parametrize("uncertain, expected", [
    ("zero", {"a.png": 1, "b.png": 1, "c.png": 4, "d.png": 0, "e.png": 6, "f.png": 2}),
    ("one", {"a.png": 1, "b.png": 3, "c.png": 4, "d.png": 0, "e.png": 7, "f.png": 2}),
    ("drop", {"a.png": 1, "c.png": 4, "d.png": 0, "f.png": 2}),
])
def test_folder_label_columns_and_uncertain_policies(column_folder, tmp_path, uncertain, expected):
    root, labels = column_folder
    cache = _prepare(root, labels, tmp_path / "cache", label_columns=["A", "B", "C"], uncertain=uncertain)
    assert cache.task == "multilabel" and cache.label_names == ["A", "B", "C"]
    assert _masks(cache) == expected
    assert [c for c in cache.manifest.columns if c in ("A", "B", "C", "site")] == ["site"]  # labels not copied
    dropped = cache.meta["label_check"]["uncertain_dropped"]
    assert dropped == (["chex.csv:3: b.png", "chex.csv:6: e.png"] if uncertain == "drop" else [])
    assert cache.meta["params"]["uncertain"] == uncertain and cache.meta["params"]["label_columns"] == ["A", "B", "C"]


def test_folder_label_column_problems(column_folder, tmp_path):
    root, _ = column_folder
    bad = _csv(tmp_path / "bad.csv", "path,A,B", ["a.png,1,yes", "b.png,2,0", "c.png,0,1"])
    with pytest.raises(DataError) as err:
        _prepare(root, bad, tmp_path / "c", label_columns=["A", "B"])
    assert str(err.value).startswith(f"{bad}: 2 malformed rows (e.g. bad.csv:2: B 'yes' is not 1, 0, -1 or blank; "
                                     "bad.csv:3: A '2' is not 1, 0, -1 or blank)")
    with pytest.raises(DataError, match=r"bad.csv: --label-columns \['Z'\] not in the CSV"):
        _prepare(root, bad, tmp_path / "c", label_columns=["A", "Z"])
    with pytest.raises(DataError, match="--uncertain 'maybe': valid values are zero, one, drop"):
        _prepare(root, bad, tmp_path / "c", label_columns=["A"], uncertain="maybe")
    with pytest.raises(DataError, match="--uncertain one: applies only with --label-columns"):
        _prepare(root, bad, tmp_path / "c", uncertain="one")
