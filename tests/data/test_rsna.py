"""RSNA labels -> one row per patient, checked against the image folder; the real 110-patient sample."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medclf.data.cache import Cache
from medclf.data.prepare import prepare_rsna
from medclf.data.rsna import DETAILED_NAMES, rsna_source
from medclf.errors import DataError


def test_labels_collapse_to_one_row_per_patient(synthetic_rsna):
    rows = pd.read_csv(synthetic_rsna / "stage_2_train_labels.csv")
    src = rsna_source(synthetic_rsna / "stage_2_train_images", synthetic_rsna / "stage_2_train_labels.csv")
    assert src.report.ok and len(src.items) == 40 and int(src.items["label"].sum()) == 12
    assert src.label_names == ["normal", "pneumonia"] and src.positive_index == 1
    multi = rows["patientId"].value_counts()
    pid = multi.index[0]  # a positive patient with two boxes
    assert multi.iloc[0] == 2
    boxes = src.items.set_index("id").at[pid, "boxes"]
    expected = rows.loc[rows["patientId"] == pid, ["x", "y", "width", "height"]].to_numpy().tolist()
    assert boxes == expected
    detailed = rsna_source(synthetic_rsna / "stage_2_train_images", synthetic_rsna / "stage_2_train_labels.csv",
                           synthetic_rsna / "stage_2_detailed_class_info.csv", label_mode="detailed")
    assert detailed.label_names == DETAILED_NAMES and detailed.positive_index == 2
    np.testing.assert_array_equal(detailed.items["label"] == 2, src.items["label"] == 1)


def _broken_copy(synthetic_rsna: Path, tmp_path: Path) -> Path:
    root = tmp_path / "rsna"
    shutil.copytree(synthetic_rsna, root)
    images = root / "stage_2_train_images"
    (images / "synthetic-0000.dcm").unlink()  # label without image
    shutil.copy(images / "synthetic-0001.dcm", images / "extra-patient.dcm")  # image without labels
    labels = root / "stage_2_train_labels.csv"
    with labels.open("a") as fh:
        fh.write("synthetic-0005,10,10,20,20,1\n")  # synthetic-0005 is negative: Target 0 and 1
        fh.write("synthetic-0006,,,,,x\n")  # malformed Target
    return root


def test_label_problems_stop_with_a_report(synthetic_rsna, tmp_path):
    root = _broken_copy(synthetic_rsna, tmp_path)
    out = tmp_path / "cache"
    n_rows = len(pd.read_csv(synthetic_rsna / "stage_2_train_labels.csv"))
    with pytest.raises(DataError) as err:
        prepare_rsna(root / "stage_2_train_images", root / "stage_2_train_labels.csv", out, size=32, progress=False)
    message = str(err.value)
    assert message.startswith(f"{root / 'stage_2_train_labels.csv'}: ")
    assert "1 images without labels (e.g. extra-patient.dcm)" in message
    assert "1 labels without images (e.g. synthetic-0000)" in message
    assert "1 conflicting (e.g. synthetic-0005: Target 0 and 1 rows in stage_2_train_labels.csv)" in message
    assert f"1 malformed rows (e.g. stage_2_train_labels.csv:{n_rows + 3}: Target 'x' is not 0 or 1)" in message
    assert "--skip-missing" in message and "\n" not in message
    assert not out.exists()
    report = json.loads((tmp_path / "cache.label-report.json").read_text())
    assert report["labels_without_images"] == ["synthetic-0000"]


def test_skip_missing_goes_on_and_records_what_it_left_out(synthetic_rsna, tmp_path, capsys):
    root = _broken_copy(synthetic_rsna, tmp_path)
    out = prepare_rsna(root / "stage_2_train_images", root / "stage_2_train_labels.csv", tmp_path / "cache",
                       size=32, skip_missing=True, workers=1, progress=False)
    assert "--skip-missing: leaving out 1 images without labels, 1 labels without images, 1 conflicting, " \
           "1 malformed rows (3 labelled patients dropped)" in capsys.readouterr().err
    cache = Cache.open(out)
    ids = set(cache.manifest["id"])
    assert len(cache.manifest) == 37
    assert not ids & {"synthetic-0000", "synthetic-0005", "synthetic-0006", "extra-patient"}
    check = cache.meta["label_check"]
    assert check["ok"] is False and check["skipped_problems"] is True
    assert check["counts"] == {"images_without_labels": 1, "labels_without_images": 1, "conflicting": 1,
                               "malformed_rows": 1}
    extra = str(root / "stage_2_train_images" / "extra-patient.dcm")
    assert cache.meta["skipped"] == [{"id": "extra-patient", "path": extra, "reason": "no label row"}]


@pytest.mark.realdata
def test_real_sample_prepares_110_patients(shared, tmp_path):
    root = shared("rsna-sample")
    out = prepare_rsna(root / "stage_2_train_images", root / "stage_2_train_labels.csv", tmp_path / "cache",
                       classes=root / "stage_2_detailed_class_info.csv", size=64, progress=False)
    cache = Cache.open(out)
    m = cache.manifest
    assert cache.images.shape == (110, 64, 64) and m["patient_id"].nunique() == 110
    assert int((m["label"] == 1).sum()) == 14
    audit = cache.meta["leakage_audit"]
    assert audit["ok"] and audit["patients_in_several_splits"] == []
    assert sum(audit["n_patients"].values()) == 110
    per_split = [set(m.loc[m["split"] == s, "patient_id"]) for s in ("train", "val", "test")]
    assert not (per_split[0] & per_split[1] or per_split[0] & per_split[2] or per_split[1] & per_split[2])
    assert set(m["view"]) == {"AP", "PA"} and set(m["sex"]) <= {"M", "F"} and m["age"].between(1, 100).all()
    labels = pd.read_csv(root / "stage_2_train_labels.csv")
    row = labels.dropna().iloc[0]
    boxes = cache.boxes(int(np.flatnonzero(m["id"] == row["patientId"])[0]))
    expected = [row["x"] / 16, row["y"] / 16, row["width"] / 16, row["height"] / 16]  # 1024 -> 64 px
    np.testing.assert_allclose(boxes[0], expected, atol=0.005)  # stored rounded to 0.01
