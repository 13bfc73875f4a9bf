"""RSNA Pneumonia Detection Challenge source: label files -> one row per patient, checked against the images.

`stage_2_train_labels.csv` has one row per box (several per positive patient, one empty row per negative);
`stage_2_detailed_class_info.csv` repeats the patient's class on each of those rows. Both collapse to one
label per patient with every box kept (original 1024-pixel coordinates; prepare scales them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medclf.errors import DataError

LABEL_MODES = ("binary", "detailed")
BINARY_NAMES = ["normal", "pneumonia"]
DETAILED_NAMES = ["Normal", "No Lung Opacity / Not Normal", "Lung Opacity"]
LABEL_COLUMNS = ["patientId", "x", "y", "width", "height", "Target"]
BOX_COLUMNS = ["x", "y", "width", "height"]
_EXAMPLES = 3  # how many offenders a one-line summary names


@dataclass
class LabelReport:
    """What the label files and the image folder disagree on; each entry names the patient/file/line."""

    images_without_labels: list[str] = field(default_factory=list)
    labels_without_images: list[str] = field(default_factory=list)
    conflicting: list[str] = field(default_factory=list)
    malformed_rows: list[str] = field(default_factory=list)
    bad_patients: set[str] = field(default_factory=set)  # patients dropped by --skip-missing (not serialised)

    @property
    def ok(self) -> bool:
        return not (self.images_without_labels or self.labels_without_images or self.conflicting or self.malformed_rows)

    def summary(self) -> str:
        parts = []
        for name, entries in self.to_dict().items():
            if entries:
                parts.append(f"{len(entries)} {name.replace('_', ' ')} (e.g. {'; '.join(entries[:_EXAMPLES])})")
        return ", ".join(parts) if parts else "labels and images agree"

    def to_dict(self) -> dict[str, list[str]]:
        data = asdict(self)
        data.pop("bad_patients")
        return data


@dataclass
class RsnaSource:
    items: pd.DataFrame  # id, patient_id, label, label_name, boxes (list of [x, y, w, h]), path
    label_names: list[str]
    positive_index: int
    report: LabelReport


def rsna_source(images_dir: str | Path, labels_csv: str | Path, classes_csv: str | Path | None = None,
                label_mode: str = "binary") -> RsnaSource:
    """Read and check the RSNA labels against `images_dir/<patientId>.dcm`.

    The report lists every disagreement; `items` holds only patients without any problem, so a caller that
    accepts the report (`--skip-missing`) can use it as is.
    """
    if label_mode not in LABEL_MODES:
        raise DataError(f"unknown label mode {label_mode!r}; valid: {', '.join(LABEL_MODES)}")
    if label_mode == "detailed" and classes_csv is None:
        raise DataError("--label-mode detailed needs --classes stage_2_detailed_class_info.csv")
    images_dir = Path(images_dir).resolve()
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: image folder not found")
    per_patient, report = read_rsna_labels(labels_csv, classes_csv)
    images = {p.stem: p for p in sorted(images_dir.glob("*.dcm"))}
    labelled = set(per_patient.index) | report.bad_patients
    report.images_without_labels = sorted(f"{images[s].name}" for s in set(images) - labelled)
    report.labels_without_images = sorted(set(per_patient.index) - set(images))
    report.bad_patients |= set(report.labels_without_images)
    keep = per_patient[~per_patient.index.isin(report.bad_patients)]
    if label_mode == "binary":
        names, labels = BINARY_NAMES, keep["target"].to_numpy(dtype=np.int64)
    else:
        names = DETAILED_NAMES
        labels = keep["class"].map({n: i for i, n in enumerate(names)}).to_numpy(dtype=np.int64)
    items = pd.DataFrame({
        "id": keep.index.astype(str), "patient_id": keep.index.astype(str), "label": labels,
        "label_name": [names[i] for i in labels], "boxes": keep["boxes"].to_list(),
        "path": [str(images[p]) for p in keep.index],
    })
    positive = 1 if label_mode == "binary" else names.index("Lung Opacity")
    return RsnaSource(items=items.reset_index(drop=True), label_names=list(names), positive_index=positive, report=report)


def read_rsna_labels(labels_csv: str | Path, classes_csv: str | Path | None = None) -> tuple[pd.DataFrame, LabelReport]:
    """Label files alone -> one row per patient (index patientId; `target`, `boxes`, and `class` when
    `classes_csv` is given) plus the report of malformed rows and conflicts. Patients with a problem are
    listed in `report.bad_patients` (and may still have a row)."""
    report = LabelReport()
    per_patient = _read_labels(Path(labels_csv), report)
    if classes_csv is not None:
        per_patient = _join_classes(per_patient, Path(classes_csv), report)
    return per_patient, report


def _read_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: label file not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise DataError(f"{path}: not a readable CSV ({' '.join(str(err).split())})") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing columns {missing}; expected {columns}")
    frame = frame[columns].apply(lambda col: col.str.strip())
    frame["line"] = np.arange(len(frame)) + 2  # 1-based, after the header line
    return frame


def _read_labels(path: Path, report: LabelReport) -> pd.DataFrame:
    """One row per patient: target (0/1) and boxes; malformed rows and Target conflicts go to the report."""
    frame = _read_csv(path, LABEL_COLUMNS)
    target = pd.to_numeric(frame["Target"], errors="coerce")
    box = frame[BOX_COLUMNS].apply(pd.to_numeric, errors="coerce")
    has_any_box = (frame[BOX_COLUMNS] != "").any(axis=1)
    good_box = box.notna().all(axis=1) & (box["width"] > 0) & (box["height"] > 0) & (box["x"] >= 0) & (box["y"] >= 0)
    reasons = pd.Series("", index=frame.index)
    reasons[frame["patientId"] == ""] = "empty patientId"
    reasons[(reasons == "") & ~target.isin([0, 1])] = "Target " + frame["Target"].map(repr) + " is not 0 or 1"
    reasons[(reasons == "") & (target == 1) & ~good_box] = "Target 1 needs a box x,y,width,height (>0)"
    reasons[(reasons == "") & (target == 0) & has_any_box] = "Target 0 with box values"
    bad = reasons != ""
    report.malformed_rows += [f"{path.name}:{ln}: {r}" for ln, r in zip(frame["line"][bad], reasons[bad])]
    report.bad_patients |= set(frame.loc[bad & (frame["patientId"] != ""), "patientId"])
    frame, target, box = frame[~bad], target[~bad], box[~bad]
    targets = target.groupby(frame["patientId"]).agg(["min", "max"])
    conflict = targets.index[targets["min"] != targets["max"]]
    report.conflicting += [f"{p}: Target 0 and 1 rows in {path.name}" for p in conflict]
    report.bad_patients |= set(conflict)
    boxes = box[target == 1].round(2).values.tolist()
    box_frame = pd.DataFrame({"patientId": frame.loc[target == 1, "patientId"].to_numpy(), "box": boxes})
    box_lists = box_frame.groupby("patientId", sort=False)["box"].agg(list)
    out = pd.DataFrame({"target": targets["max"].astype(np.int64)})
    out["boxes"] = [box_lists.get(p, []) for p in out.index]
    return out.sort_index()


def _join_classes(per_patient: pd.DataFrame, path: Path, report: LabelReport) -> pd.DataFrame:
    """Attach the detailed class; it must be one known class per patient and agree with Target."""
    frame = _read_csv(path, ["patientId", "class"])
    bad = ~frame["class"].isin(DETAILED_NAMES) | (frame["patientId"] == "")
    report.malformed_rows += [f"{path.name}:{ln}: unknown class {c!r}" for ln, c in zip(frame["line"][bad], frame["class"][bad])]
    report.bad_patients |= set(frame.loc[bad & (frame["patientId"] != ""), "patientId"])
    classes = frame[~bad].groupby("patientId")["class"].agg(lambda s: sorted(set(s)))
    several = classes.index[classes.map(len) > 1]
    report.conflicting += [f"{p}: several classes in {path.name}" for p in several]
    report.bad_patients |= set(several)
    per_patient = per_patient.copy()
    per_patient["class"] = classes.map(lambda c: c[0]).reindex(per_patient.index)
    no_class = per_patient.index[per_patient["class"].isna()].difference(report.bad_patients)
    report.conflicting += [f"{p}: not in {path.name}" for p in no_class]
    extra = classes.index.difference(per_patient.index).difference(report.bad_patients)
    report.conflicting += [f"{p}: in {path.name} but not in the labels file" for p in extra]
    mismatch = per_patient.index[per_patient["class"].notna()
                                 & ((per_patient["class"] == "Lung Opacity") != (per_patient["target"] == 1))]
    report.conflicting += [f"{p}: class {per_patient.at[p, 'class']!r} disagrees with Target "
                           f"{per_patient.at[p, 'target']}" for p in mismatch]
    report.bad_patients |= set(no_class) | set(extra) | set(mismatch)
    return per_patient


def report_dict(report: LabelReport, skipped: bool) -> dict[str, Any]:
    """The label check as cache.json records it: counts, whether problems were skipped, and every entry."""
    entries = report.to_dict()
    return {"ok": report.ok, "skipped_problems": skipped and not report.ok,
            "counts": {k: len(v) for k, v in entries.items()}, **entries}
