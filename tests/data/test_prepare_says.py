"""What prepare says instead of going wrong quietly (issue 22): a folder CSV's patient column by its usual
spellings, a near miss refused, what grouped the patients said every time (item 1); empty views are the group
`unknown` (item 7); upscaling said (item 6); a multiclass set needs no --positive (item 11); column typos."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medclf.data.cache import Cache
from medclf.data.prepare import prepare_folder
from medclf.data.summary import data_summary
from medclf.errors import DataError


def _two_images_per_patient(tmp_path, column: str):
    """40 PNGs of 20 patients (2 each, the same label); the patient column named `column`."""
    root = tmp_path / "imgs"
    root.mkdir()
    rng = np.random.default_rng(0)
    rows = [f"path,label,{column}"]
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(root / f"i{i:02d}.png")
        rows.append(f"i{i:02d}.png,{'pneumonia' if i // 2 % 2 else 'normal'},subj{i // 2:02d}")
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    return root, labels


@pytest.mark.parametrize("column", ["PatientID", "patient", "Subject_ID"])
def test_usual_spellings_group_patients_and_say_so(tmp_path, capsys, column):
    root, labels = _two_images_per_patient(tmp_path, column)
    cache = Cache.open(prepare_folder(root, labels, tmp_path / "cache", size=16, val=0.2, test=0.2, workers=1,
                                      progress=False))
    m = cache.manifest
    assert m["patient_id"].nunique() == 20 and m.groupby("patient_id")["split"].nunique().max() == 1
    assert column not in m.columns  # it became patient_id, not an extra column
    assert f"patients: grouped by column '{column}' of labels.csv (20 patients, 40 images)" in capsys.readouterr().err
    assert cache.meta["leakage_audit"]["patient_column"] == column
    summary = data_summary(cache)
    assert summary["patients"] == f"grouped by the labels column '{column}'; no patient is in two splits"
    assert set(summary["view_counts"]["train"]) == {"unknown"}  # PNGs have no view: item 7


def test_near_miss_is_refused(tmp_path):
    root, labels = _two_images_per_patient(tmp_path, "patent_id")
    with pytest.raises(DataError) as err:
        prepare_folder(root, labels, tmp_path / "cache", size=16, progress=False)
    assert str(err.value) == (f"{labels}: column 'patent_id' is not a patient column; did you mean patient_id? "
                              "(rename it, so that one patient's images stay in one split)")


def test_no_patient_column_is_said(tmp_path, capsys):
    root, labels = _two_images_per_patient(tmp_path, "site")
    cache = Cache.open(prepare_folder(root, labels, tmp_path / "cache", size=16, workers=1, progress=False))
    assert ("patients: labels.csv has no patient_id column, so each image is its own patient and one patient's "
            "images may land in more than one split") in capsys.readouterr().err
    assert cache.meta["leakage_audit"]["patient_column"] is None
    assert data_summary(cache)["patients"] == "no patient_id column: each image is its own patient"


def test_upscaling_is_said(tmp_path, capsys):
    """16-px images prepared at --size 32 are upscaled: prepare says so, and which size keeps them (item 6)."""
    root, labels = _two_images_per_patient(tmp_path, "patient_id")
    prepare_folder(root, labels, tmp_path / "cache", size=32, workers=1, progress=False)
    assert ("note: --size 32 is larger than 40 of 40 images (their own long side 16 px); those are upscaled, "
            "which adds no detail; --size 16 keeps the largest as they are") in capsys.readouterr().err
    prepare_folder(root, labels, tmp_path / "c16", size=16, workers=1, progress=False)
    assert "upscaled" not in capsys.readouterr().err


def test_medmnist_upscaling_is_said(tmp_path, capsys):
    from medclf.data.prepare import prepare_medmnist

    npz = tmp_path / "x.npz"
    np.savez(npz, test_images=np.zeros((4, 28, 28), np.uint8), test_labels=np.array([0, 1, 0, 1]))
    prepare_medmnist(npz, tmp_path / "c", size=64, progress=False)
    assert "note: --size 64 is larger than 4 of 4 images (their own long side 28 px)" in capsys.readouterr().err


def test_a_miscased_column_gets_a_did_you_mean(tmp_path):
    root, labels = _two_images_per_patient(tmp_path, "patient_id")
    labels.write_text(labels.read_text().replace("path,label,", "Path,label,", 1))
    with pytest.raises(DataError) as err:
        prepare_folder(root, labels, tmp_path / "cache", size=16, progress=False)
    assert str(err.value) == (f"{labels}: missing columns ['path']; expected path,label[,patient_id]; did you mean "
                              "path? (the file has 'Path')")


def test_multiclass_needs_no_positive(tmp_path, capsys):
    root, labels = _two_images_per_patient(tmp_path, "patient_id")
    lines = labels.read_text().splitlines()
    rows = [line.replace("normal", ["cyst", "normal", "tumour"][i % 3]) for i, line in enumerate(lines[1:])]
    labels.write_text("\n".join([lines[0], *rows]) + "\n")
    cache = Cache.open(prepare_folder(root, labels, tmp_path / "cache", size=16, workers=1, progress=False,
                                      task="multiclass"))
    assert cache.label_names == ["cyst", "normal", "pneumonia", "tumour"] and cache.positive_index == 3
    assert ("note: 4 classes and no --positive: the binary keys of metrics.json (recall, specificity, roc_auc, "
            "...) compare 'tumour' (the last class) against the rest; the per-class metrics cover every class; "
            "--positive NAME picks another") in capsys.readouterr().err


def test_the_patient_line_is_said_again_when_the_cache_is_up_to_date(tmp_path, capsys):
    root, labels = _two_images_per_patient(tmp_path, "patient")
    prepare_folder(root, labels, tmp_path / "cache", size=16, workers=1, progress=False)
    capsys.readouterr()
    prepare_folder(root, labels, tmp_path / "cache", size=16, workers=1, progress=False)
    assert capsys.readouterr().err.splitlines() == [
        f"nothing to do: {tmp_path / 'cache'} is up to date (same inputs and parameters)",
        "patients: grouped by column 'patient' of labels.csv (20 patients, 40 images)"]
