"""RSNA Pneumonia Detection Challenge source: label files -> one row per patient, checked against the images.

`stage_2_train_labels.csv` has one row per box (several per positive patient, one empty row per negative);
`stage_2_detailed_class_info.csv` repeats the patient's class on each of those rows. Both collapse to one
label per patient with every box kept (original 1024-pixel coordinates; prepare scales them).
"""

from __future__ import annotations

import csv
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

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
    images = {p.stem: p for p in images_dir.glob("*.dcm")}
    labelled = set(per_patient.index) | report.bad_patients
    report.images_without_labels = sorted(images[s].name for s in set(images) - labelled)
    report.labels_without_images = sorted(set(per_patient.index) - set(images))
    report.bad_patients |= set(report.labels_without_images)
    keep = per_patient[[p not in report.bad_patients for p in per_patient.index]]
    if label_mode == "binary":
        names, labels = BINARY_NAMES, keep["target"].tolist()
    else:
        names, labels = DETAILED_NAMES, [DETAILED_NAMES.index(c) for c in keep["class"]]
    ids = [str(p) for p in keep.index]
    items = pd.DataFrame({
        "id": ids, "patient_id": ids, "label": np.array(labels, dtype=np.int64),
        "label_name": [names[i] for i in labels], "boxes": keep["boxes"].tolist(),
        "path": [str(images[p]) for p in ids],
    })
    positive = 1 if label_mode == "binary" else names.index("Lung Opacity")
    return RsnaSource(items=items, label_names=list(names), positive_index=positive, report=report)


def read_rsna_labels(labels_csv: str | Path, classes_csv: str | Path | None = None) -> tuple[pd.DataFrame, LabelReport]:
    """Label files alone -> one row per patient (index patientId, sorted; `target`, `boxes`, and `class` when
    `classes_csv` is given) plus the report of malformed rows and conflicts. Patients with a problem are
    listed in `report.bad_patients` (and may still have a row).

    Plain `csv` rather than pandas: row-by-row validation reads naturally, the full 30,227-row file takes
    about 0.3 s, and a small file takes milliseconds instead of pandas' fixed ~30 ms (it is on `prepare`'s
    serial path).
    """
    report = LabelReport()
    per_patient = _read_labels(Path(labels_csv), report)
    if classes_csv is not None:
        _join_classes(per_patient, Path(classes_csv), report)
    ids = sorted(per_patient)
    columns = {key: [per_patient[p][key] for p in ids] for key in per_patient[ids[0]]} if ids else \
        {"target": [], "boxes": []}
    return pd.DataFrame(columns, index=pd.Index(ids, name="patientId")), report


def _read_rows(path: Path, columns: list[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, stripped values) per row; a missing column or an unreadable file is a DataError."""
    if not path.is_file():
        raise DataError(f"{path}: label file not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            missing = [c for c in columns if c not in header]
            if missing:
                raise DataError(f"{path}: missing columns {missing}; expected {columns}")
            at = [header.index(c) for c in columns]
            rows = []
            for row in reader:
                if not row:  # blank line
                    continue
                row += [""] * (max(at) + 1 - len(row))  # missing trailing fields are empty, as pandas reads them
                rows.append((reader.line_num, {c: row[i].strip() for c, i in zip(columns, at)}))
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: not a readable CSV ({' '.join(str(err).split())})") from None
    if not rows:
        raise DataError(f"{path}: no label rows (only the header)")
    return iter(rows)


def _label_row_problem(row: dict[str, str]) -> str:
    """Why a labels row is malformed, or '' when it is fine."""
    if not row["patientId"]:
        return "empty patientId"
    target = _number(row["Target"])
    if target not in (0.0, 1.0):
        return f"Target {row['Target']!r} is not 0 or 1"
    values = [row[c] for c in BOX_COLUMNS]
    if target == 0.0:
        return "Target 0 with box values" if any(values) else ""
    x, y, w, h = (_number(v) for v in values)
    ok = None not in (x, y, w, h) and w > 0 and h > 0 and x >= 0 and y >= 0  # NaN fails every comparison
    return "" if ok else "Target 1 needs a box x,y,width,height (>0)"


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _read_labels(path: Path, report: LabelReport) -> dict[str, dict[str, Any]]:
    """patientId -> {target, boxes}; malformed rows and Target conflicts go to the report."""
    targets: dict[str, set[int]] = {}
    boxes: dict[str, list[list[float]]] = {}
    for line, row in _read_rows(path, LABEL_COLUMNS):
        pid, problem = row["patientId"], _label_row_problem(row)
        if problem:
            report.malformed_rows.append(f"{path.name}:{line}: {problem}")
            if pid:
                report.bad_patients.add(pid)
            continue
        target = int(float(row["Target"]))
        targets.setdefault(pid, set()).add(target)
        if target == 1:
            boxes.setdefault(pid, []).append([round(float(row[c]), 2) for c in BOX_COLUMNS])
    conflict = sorted(p for p, t in targets.items() if len(t) > 1)
    report.conflicting += [f"{p}: Target 0 and 1 rows in {path.name}" for p in conflict]
    report.bad_patients |= set(conflict)
    return {p: {"target": max(t), "boxes": boxes.get(p, [])} for p, t in targets.items()}


def _join_classes(per_patient: dict[str, dict[str, Any]], path: Path, report: LabelReport) -> None:
    """Attach the detailed class; it must be one known class per patient and agree with Target."""
    classes: dict[str, set[str]] = {}
    for line, row in _read_rows(path, ["patientId", "class"]):
        pid, cls = row["patientId"], row["class"]
        if not pid or cls not in DETAILED_NAMES:
            report.malformed_rows.append(f"{path.name}:{line}: unknown class {cls!r}" if pid
                                         else f"{path.name}:{line}: empty patientId")
            if pid:
                report.bad_patients.add(pid)
            continue
        classes.setdefault(pid, set()).add(cls)
    several = sorted(p for p, c in classes.items() if len(c) > 1)
    report.conflicting += [f"{p}: several classes in {path.name}" for p in several]
    report.bad_patients |= set(several)
    for pid, entry in per_patient.items():
        entry["class"] = min(classes[pid]) if pid in classes else None
    no_class = sorted(p for p, e in per_patient.items() if e["class"] is None and p not in report.bad_patients)
    report.conflicting += [f"{p}: not in {path.name}" for p in no_class]
    extra = sorted(p for p in classes if p not in per_patient and p not in report.bad_patients)
    report.conflicting += [f"{p}: in {path.name} but not in the labels file" for p in extra]
    mismatch = sorted(p for p, e in per_patient.items() if e["class"] is not None and p not in several
                      and (e["class"] == "Lung Opacity") != (e["target"] == 1))
    report.conflicting += [f"{p}: class {per_patient[p]['class']!r} disagrees with Target "
                           f"{per_patient[p]['target']}" for p in mismatch]
    report.bad_patients |= set(no_class) | set(extra) | set(mismatch)


def report_dict(report: LabelReport, skipped: bool) -> dict[str, Any]:
    """The label check as cache.json records it: counts, whether problems were skipped, and every entry."""
    entries = report.to_dict()
    return {"ok": report.ok, "skipped_problems": skipped and not report.ok,
            "counts": {k: len(v) for k, v in entries.items()}, **entries}


def label_problems(report: LabelReport, where: Path, out: Path, skip_missing: bool) -> None:
    """Stop with the report (the full list written to `<out>.label-report.json`), or say on stderr what
    --skip-missing leaves out."""
    if report.ok:
        return
    if not skip_missing:
        from medclf.io import write_json

        report_path = out.parent / f"{out.name}.label-report.json"
        write_json(report_path, report.to_dict())
        raise DataError(f"{where}: {report.summary()}; full list in {report_path}; "
                        "pass --skip-missing to leave them out")
    counts = ", ".join(f"{len(v)} {k.replace('_', ' ')}" for k, v in report.to_dict().items() if v)
    print(f"--skip-missing: leaving out {counts} ({len(report.bad_patients)} labelled patients dropped)",
          file=sys.stderr, flush=True)
