"""Multi-label sources: the synthetic multi-label cache, folder CSVs (`A|B` and 0/1 columns), MedMNIST (N, K)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from medclf.cli.prepare import register
from medclf.data.cache import Cache
from medclf.data.prepare import prepare_folder, prepare_medmnist
from medclf.data.splits import split_patients, split_strata
from medclf.data.synthetic import SHAPES, write_synthetic_multilabel
from medclf.errors import DataError
from medclf.tasks import label_counts, multi_hot

REPO = Path(__file__).resolve().parents[2]


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


def test_the_synthetic_files_prepare_to_the_same_findings(tmp_path):
    """write_synthetic_multilabel_files (the README's multi-label example) through `prepare folder`: the `A|B`
    labels become the cache's masks, image for image (names sorted: bar, disc, square)."""
    from medclf.data.synthetic import write_synthetic_multilabel_files

    folder = write_synthetic_multilabel_files(tmp_path / "files", n=40, size=48, seed=3)
    direct = Cache.open(write_synthetic_multilabel(tmp_path / "direct", n=40, size=48, seed=3))
    cache = Cache.open(prepare_folder(folder / "images", folder / "labels.csv", tmp_path / "c", size=48,
                                      progress=False))
    assert cache.task == "multilabel" and cache.label_names == ["bar", "disc", "square"]
    by_id = dict(zip(direct.manifest["id"] + ".png", direct.manifest["label_name"]))
    names = cache.manifest["label_name"].tolist()
    assert [by_id[i] for i in cache.manifest["id"]] == [
        "|".join(sorted(n.split("|"), key=list(SHAPES).index)) if n != "No Finding" else n for n in names]


def test_data_summary_of_a_multilabel_cache(tmp_path):
    from medclf.data.summary import data_summary

    cache = Cache.open(write_synthetic_multilabel(tmp_path / "c", n=60))
    summary = data_summary(cache)
    assert summary["task"] == "multilabel" and summary["split_counts"] == cache.meta["split_counts"]
    assert summary["synthetic"]["n"] == 60
    assert summary["split_sizes"] == cache.manifest["split"].value_counts().to_dict()
    assert sum(summary["split_sizes"].values()) == 60


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


# -------------------------------------------------------------------------------------------- stratification

def test_a_rare_label_lands_in_every_split(tmp_path):
    """10 of 200 images hold `Hernia`, each beside a different pair of common findings: stratified by the bit
    mask each would be alone in its stratum and stay in train; by the rarest label val and test get one each."""
    common = ["Atelectasis", "Effusion", "Mass", "Nodule", "Edema"]
    pairs = [f"{a}|{b}" for i, a in enumerate(common) for b in common[i + 1:]]  # 10 distinct pairs
    labels = [f"{pairs[i // 20]}|Hernia" if i % 20 == 7 else common[i % 5] for i in range(200)]
    names = [f"{i:03d}.png" for i in range(200)]
    csv = _csv(tmp_path / "labels.csv", "path,label", [f"{n},{lab}" for n, lab in zip(names, labels)])
    cache = Cache.open(prepare_folder(_pngs(tmp_path / "imgs", names), csv, tmp_path / "cache", size=8, val=0.1,
                                      test=0.1, workers=1, progress=False))
    counts = cache.meta["split_counts"]
    assert [counts[s]["Hernia"] for s in ("train", "val", "test")] == [8, 1, 1], counts
    hernia = multi_hot(cache.labels(), 6)[:, cache.label_names.index("Hernia")] == 1
    by_mask = split_patients(cache.labels(), cache.manifest["patient_id"], 0.1, 0.1, 0)
    assert set(by_mask[hernia]) == {"train"}  # what stratifying on the raw masks would have done


def test_split_strata_is_the_rarest_label():
    masks = np.array([0b011, 0b001, 0b001, 0b101, 0b000])  # counts: label0 4, label1 1, label2 1
    assert split_strata(masks, "multilabel", 3).tolist() == [1, 0, 0, 2, 3]
    assert split_strata(masks, None, 3).tolist() == masks.tolist()  # binary/multiclass: the labels


# --------------------------------------------------------------------------------------------------- MedMNIST

def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_chestmnist_shaped_labels_make_a_multilabel_cache(tmp_path, capsys):
    hot = np.zeros((6, 14), np.uint8)
    hot[0, [0, 13]] = 1  # atelectasis, hernia
    hot[1, 2] = 1  # effusion
    hot[4, [2, 4, 5]] = 1  # effusion, mass, nodule
    npz = _npz(tmp_path / "chestmnist_64.npz", train_images=np.zeros((4, 6, 6), np.uint8), train_labels=hot[:4],
               test_images=np.full((2, 6, 6), 9, np.uint8), test_labels=hot[4:])
    cache = Cache.open(prepare_medmnist(npz, tmp_path / "c", progress=False))
    assert cache.task == "multilabel" and cache.meta["label_mode"] == "multilabel" and cache.positive_index == 0
    assert cache.label_names[:3] == ["atelectasis", "cardiomegaly", "effusion"] and len(cache.label_names) == 14
    assert cache.label_names[-2:] == ["pleural", "hernia"]
    assert cache.labels().tolist() == [1 + (1 << 13), 4, 0, 0, 4 + 16 + 32, 0]
    assert cache.manifest["label_name"].tolist() == ["atelectasis|hernia", "effusion", "No Finding", "No Finding",
                                                     "effusion|mass|nodule", "No Finding"]
    assert cache.manifest["split"].tolist() == ["train"] * 4 + ["test"] * 2
    assert cache.meta["split_counts"]["test"]["effusion"] == 1 and cache.meta["split_counts"]["train"]["hernia"] == 1
    assert "6 images (train 4, test 2; images per label: atelectasis 1, cardiomegaly 0, effusion 2," in \
        capsys.readouterr().err


def test_medmnist_multilabel_names_and_problems(tmp_path):
    images = np.zeros((2, 4, 4), np.uint8)
    plain = _npz(tmp_path / "x.npz", val_images=images, val_labels=np.array([[1, 0, 1], [0, 0, 0]]))
    cache = Cache.open(prepare_medmnist(plain, tmp_path / "c1", progress=False))
    assert cache.label_names == ["0", "1", "2"] and cache.labels().tolist() == [5, 0]
    cache = Cache.open(prepare_medmnist(plain, tmp_path / "c2", label_names=["a", "b", "c"], progress=False))
    assert cache.manifest["label_name"].tolist() == ["a|c", "No Finding"]
    with pytest.raises(DataError, match=r"x.npz: 3 labels per image but 2 label names \['a', 'b'\]"):
        prepare_medmnist(plain, tmp_path / "c3", label_names=["a", "b"], progress=False)
    with pytest.raises(DataError, match="x.npz: --positive applies to binary sets"):
        prepare_medmnist(plain, tmp_path / "c3", positive="a", progress=False)
    twos = _npz(tmp_path / "y.npz", train_images=images, train_labels=np.array([[2, 0], [0, 1]]))
    with pytest.raises(DataError, match=r"y.npz: multi-label labels must be 0 or 1, found \[0, 1, 2\]"):
        prepare_medmnist(twos, tmp_path / "c3", progress=False)
    mixed = _npz(tmp_path / "z.npz", train_images=images, train_labels=np.array([[1, 0], [0, 1]]),
                 test_images=images, test_labels=np.array([0, 1]))
    with pytest.raises(DataError, match="z.npz: the splits' label arrays differ in shape"):
        prepare_medmnist(mixed, tmp_path / "c3", progress=False)
    assert not (tmp_path / "c3").exists()


# ----------------------------------------------------------------------------------------------- command line

@pytest.fixture()
def app() -> typer.Typer:
    app = typer.Typer()
    app.command("noop")(lambda: None)  # keeps `prepare` a sub-command, as in medclf.cli.main
    register(app)
    return app


def _cli(root, labels, out, *extra):
    return ["prepare", "folder", "--images", str(root), "--labels", str(labels), "--out", str(out), "--size", "8",
            "--val", "0.25", "--test", "0.25", "--workers", "1", "--quiet", *extra]


def test_cli_label_columns_with_drop(app, column_folder, tmp_path):
    root, labels = column_folder
    out = tmp_path / "cache"
    result = CliRunner().invoke(app, _cli(root, labels, out, "--label-columns", "A, B,C", "--uncertain", "drop"))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    assert "--uncertain drop: left out 2 images with an uncertain (-1) label" in result.stderr
    cache = Cache.open(out)
    assert cache.task == "multilabel" and _masks(cache) == {"a.png": 1, "c.png": 4, "d.png": 0, "f.png": 2}


@pytest.mark.slow
def test_cli_bad_label_cell_is_one_line_exit_2(column_folder, tmp_path):
    root, _ = column_folder
    bad = _csv(tmp_path / "bad.csv", "path,A,B", ["a.png,1,yes", "c.png,0,1"])
    out = tmp_path / "cache"
    proc = subprocess.run([sys.executable, "-m", "medclf", *_cli(root, bad, out, "--label-columns", "A,B")],
                          capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: {bad}: 1 malformed rows (e.g. bad.csv:2: B 'yes' is not 1, 0, -1 or blank)")
    assert not out.exists()


def test_raw_bit_masks_as_strata_stay_cheap():
    """K = 40 masks (values up to 2**40) must not cost a column per possible value."""
    masks = np.array([1 << 39, 1 << 39, 3, 3, 0, 0, 1 << 20, 1 << 20] * 5, dtype=np.int64)
    split = split_patients(masks, np.arange(40), val=0.25, test=0.25, seed=0)
    for mask in np.unique(masks):  # each stratum of 10: round(2.5) = 3 to test and to val, 4 to train
        assert sorted(split[masks == mask]) == ["test"] * 3 + ["train"] * 4 + ["val"] * 3
