"""Folder source: PNG/JPEG/DICOM files under a folder plus a CSV `path,label[,patient_id]`.

Any other column (`view`, `sex`, `age`, or your own such as `site` or `scanner`) is kept as a manifest column,
so `evaluate --by` can report results per group of it; a CSV `view`/`sex`/`age` value fills the manifest's own
column (ahead of what a DICOM header says). Columns named like the manifest's bookkeeping (`index`, `id`,
`label_name`, `split`, `boxes`, `source`) are ignored, as before.
`path` is relative to the folder; a path that leaves it (`../x.png`, an absolute path elsewhere, or a symbolic
link inside the folder that resolves outside it) is refused unless the caller allows it
(`--allow-outside-images`), so neither a labels file nor a planted link can pull other files into a cache.
`label` is an integer class index or a class name. The patient column may also be spelled `patient`,
`PatientID`, `subject` or `subject_id` (any case; `patient_column`); a near miss such as `patent_id` is refused
with "did you mean patient_id?". Without one every image is its own patient (the split cannot then guard
against patient leakage; prepare says so on the terminal and cache.json records it). Files in the folder
that the CSV does not list are counted in the report, not an error.

Multi-label sets (task `multilabel`, medclf.data.multilabel), in either of two conventions:
- `label` holds finding names joined by `|` (ChestX-ray14 `Finding Labels`: `Effusion|Mass`), `No Finding` or an
  empty cell for none. A `|` in any label, or `task="multilabel"`, makes the set multi-label; the label names
  are the sorted names seen, or `label_names` in that order (any other name is a malformed row).
- `label_columns=["A", "B", ...]` names 0/1 columns (CheXpert); no `label` column is needed. `1` present,
  `0`/blank absent, `-1` uncertain, mapped by `uncertain` (zero | one | drop; drop leaves the image out and
  lists it in the report as `uncertain_dropped`); anything else is a malformed row. The label columns do not
  become manifest columns.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from medclf.data.imageio import INPUT_SUFFIXES
from medclf.data.multilabel import SEPARATOR, MultiLabels, no_positive, parse_label_columns, parse_label_sets
from medclf.data.rsna import LabelReport
from medclf.errors import DataError, closest
from medclf.labelsets import TASKS, label_texts

BASE_COLUMNS = ("path", "label", "patient_id")
# manifest columns the cache fills itself: a CSV column of that name would clash with them, so it is not kept
IGNORED_COLUMNS = ("index", "id", "label_name", "split", "boxes", "source", "line")
# spellings of the patient column, compared lower-cased with ' ' and '-' as '_' (patient_column)
PATIENT_COLUMNS = ("patient_id", "patient", "patientid", "subject", "subject_id", "subjectid")
NEGATIVE_NAMES = {"normal", "negative", "healthy", "benign", "no finding", "no_finding", "0", "false", "no"}


@dataclass
class FolderSource:
    items: pd.DataFrame  # id, patient_id, label, label_name, boxes, path, then the extra columns
    label_names: list[str]
    positive_index: int
    report: LabelReport
    has_patient_ids: bool
    unlisted_files: int
    extra_columns: list[str]  # CSV columns kept for the manifest (view, sex, age, site, ...)
    task: str = "binary"  # binary | multiclass | multilabel (medclf.tasks)
    uncertain_dropped: list[str] = field(default_factory=list)  # "file:line: path" left out as uncertain (-1)
    patient_column: str | None = None  # the CSV column that grouped the patients, as spelled there


def folder_source(images_dir: str | Path, labels_csv: str | Path, label_names: Sequence[str] | None = None,
                  positive: str | int | None = None, allow_outside_images: bool = False, *,
                  task: str | None = None, label_columns: Sequence[str] | None = None,
                  uncertain: str = "zero") -> FolderSource:
    """The labelled images of a folder; `task` None decides from the CSV (module docstring)."""
    given, labels_csv = Path(os.path.abspath(images_dir)), Path(labels_csv)
    images_dir = given.resolve()
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: image folder not found")
    if uncertain != "zero" and not label_columns:
        raise DataError(f"--uncertain {uncertain}: applies only with --label-columns (0/1/-1 columns)")
    frame = _read_table(labels_csv, needs_label=not label_columns)
    patients_from = patient_column(frame.columns, labels_csv)
    frame = frame.rename(columns={patients_from: "patient_id"}) if patients_from else frame
    if not allow_outside_images:
        _refuse_outside(frame, labels_csv, images_dir, given)
    report = LabelReport()
    task = _task(frame, labels_csv, task, label_columns, label_names)
    if task == "multilabel":
        multi = _parse_multilabel(frame, labels_csv, label_names, label_columns, uncertain, report)
        labels, names, dropped = multi.masks, multi.names, multi.dropped
        positive_index = no_positive(positive, labels_csv)
    else:
        labels, names = _parse_labels(frame, labels_csv, label_names, report)
        positive_index, dropped = resolve_positive(names, positive, labels_csv), []
        task = _check_single_task(task, names, labels_csv)
    has_patients = "patient_id" in frame.columns
    patient = frame["patient_id"] if has_patients else frame["path"]
    patient = patient.where(patient != "", frame["path"])
    paths = [Path(p) if Path(p).is_absolute() else images_dir / p for p in frame["path"]]
    exists = np.array([p.is_file() for p in paths])
    report.labels_without_images += sorted(frame.loc[~exists & (labels >= 0), "path"])
    dup = frame["path"].duplicated(keep=False) & (frame["path"] != "")
    report.malformed_rows += [f"{labels_csv.name}:{ln}: path {p!r} listed twice"
                              for ln, p in zip(frame["line"][dup], frame["path"][dup])]
    report.malformed_rows += [f"{labels_csv.name}:{ln}: empty path" for ln in frame["line"][frame["path"] == ""]]
    keep = exists & (labels >= 0) & ~dup.to_numpy() & (frame["path"] != "").to_numpy()
    items = pd.DataFrame({
        "id": frame["path"][keep].to_numpy(), "patient_id": patient[keep].to_numpy(), "label": labels[keep],
        "label_name": label_texts(labels[keep], names, task),
        "boxes": [[] for _ in range(int(keep.sum()))],
        "path": [str(p) for p, k in zip(paths, keep) if k],
    })
    extra = extra_columns(frame, label_columns or ())
    for column in extra:
        items[column] = frame[column][keep].to_numpy()
    listed = {p.resolve() for p, e in zip(paths, exists) if e}
    on_disk = [p for p in images_dir.rglob("*") if p.suffix.lower() in INPUT_SUFFIXES]
    unlisted = sum(1 for p in on_disk if p.resolve() not in listed)
    return FolderSource(items=items.sort_values("id").reset_index(drop=True), label_names=names,
                        positive_index=positive_index, report=report, has_patient_ids=has_patients,
                        unlisted_files=unlisted, extra_columns=extra, task=task,
                        uncertain_dropped=dropped, patient_column=patients_from)


def patient_column(columns: Sequence[str], csv: Path | str) -> str | None:
    """The column naming each image's patient (a PATIENT_COLUMNS spelling), None when there is none; a near
    miss (`patent_id`, `patients_id`) is refused, since taking it for a site or a note would quietly split one
    patient's images over train and test."""
    def key(name: str) -> str:
        return name.strip().lower().replace(" ", "_").replace("-", "_")

    found = [c for c in columns if key(c) in PATIENT_COLUMNS]
    if len(found) > 1:
        raise DataError(f"{csv}: columns {found} all look like the patient id; keep one (patient_id)")
    if found:
        return found[0]
    keys = {key(c): c for c in columns if c != "line"}
    near = difflib.get_close_matches("patient_id", list(keys), n=1, cutoff=0.8)
    if near:
        raise DataError(f"{csv}: column {keys[near[0]]!r} is not a patient column; did you mean patient_id? "
                        "(rename it, so that one patient's images stay in one split)")
    return None


def extra_columns(frame: pd.DataFrame, label_columns: Sequence[str] = ()) -> list[str]:
    """The label CSV's columns beyond path,label,patient_id (and the label columns) that become manifest
    columns, in file order."""
    return [c for c in frame.columns if c not in BASE_COLUMNS + IGNORED_COLUMNS + tuple(label_columns)]


def _task(frame: pd.DataFrame, csv: Path, declared: str | None, label_columns: Sequence[str] | None,
          label_names: Sequence[str] | None) -> str | None:
    """multilabel, binary or multiclass as declared; else multilabel for label columns or a `|` in a label,
    None (decided by the class count) otherwise."""
    if declared is not None and declared not in TASKS:
        raise DataError(f"--task {declared!r}: valid values are {', '.join(TASKS)}")
    if label_columns:
        if declared not in (None, "multilabel"):
            raise DataError(f"{csv}: --label-columns makes a multilabel set, not --task {declared}")
        if label_names:
            raise DataError(f"{csv}: give --label-columns or --label-names, not both (the columns name the labels)")
        return "multilabel"
    if declared is None and frame["label"].str.contains(SEPARATOR, regex=False).any():
        return "multilabel"
    return declared


def _parse_multilabel(frame: pd.DataFrame, csv: Path, label_names: Sequence[str] | None,
                      label_columns: Sequence[str] | None, uncertain: str, report: LabelReport) -> MultiLabels:
    if label_columns:
        multi = parse_label_columns(frame, label_columns, csv, uncertain)
    else:
        multi = parse_label_sets(frame["label"], frame["line"], csv, label_names)
    report.malformed_rows += multi.malformed
    return multi


def _check_single_task(declared: str | None, names: list[str], csv: Path) -> str:
    implied = "binary" if len(names) == 2 else "multiclass"
    if declared not in (None, implied):
        raise DataError(f"{csv}: --task {declared} but the labels hold {len(names)} classes {names}")
    return implied


def _refuse_outside(frame: pd.DataFrame, labels_csv: Path, images_dir: Path, given: Path) -> None:
    """Every listed path must stay inside the image folder, judged on the file it resolves to: `..`, an
    absolute path elsewhere, and a symbolic link inside the folder (to a file or a folder) that leads out of it
    are all refused alike. `images_dir` is resolved; `given` is --images as typed (it may itself be a link)."""
    def resolved(text: str) -> Path:
        return Path(os.path.realpath(text if os.path.isabs(text) else given / text))

    outside = [(ln, p) for ln, p in zip(frame["line"], frame["path"]) if p and
               not resolved(p).is_relative_to(images_dir)]
    if outside:
        line, path = outside[0]
        more = f" (and {len(outside) - 1} more)" if len(outside) > 1 else ""
        written = Path(os.path.normpath(path if os.path.isabs(path) else given / path))
        link = "" if not (written.is_relative_to(given) or written.is_relative_to(images_dir)) else \
            f" (a symbolic link to {resolved(path)})"  # inside as written: a link leads out
        raise DataError(f"{labels_csv.name}:{line}: path {path!r}{link} is outside --images {images_dir}{more}; "
                        "pass --allow-outside-images to read files there")


def _read_table(path: Path, needs_label: bool = True) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: label file not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise DataError(f"{path}: not a readable CSV ({' '.join(str(err).split())})") from None
    missing = [c for c in ("path", "label")[: 1 + needs_label] if c not in frame.columns]
    if missing:
        expected = "path,label[,patient_id]" if needs_label else "path[,patient_id] and the --label-columns"
        lowered = {c.strip().lower(): c for c in frame.columns}
        match = lowered.get(missing[0]) or closest(missing[0], frame.columns)
        hint = f"; did you mean {missing[0]}? (the file has {match!r})" if match else ""
        raise DataError(f"{path}: missing columns {missing}; expected {expected}{hint}")
    if frame.empty:
        raise DataError(f"{path}: no label rows (only the header)")
    frame = frame.apply(lambda c: c.str.strip())
    frame["line"] = np.arange(len(frame)) + 2
    return frame


def _parse_labels(frame: pd.DataFrame, path: Path, label_names: Sequence[str] | None,
                  report: LabelReport) -> tuple[np.ndarray, list[str]]:
    """Label column -> class indices (-1 where malformed) and the class names."""
    raw = frame["label"]
    as_int = pd.to_numeric(raw, errors="coerce")
    all_int = bool(len(raw)) and as_int.notna().all() and (as_int == as_int.round()).all()
    if all_int:
        labels = np.array(as_int, dtype=np.int64)  # a writable copy (pandas may hand out read-only views)
        names = list(label_names) if label_names else [str(i) for i in range(max(int(labels.max()) + 1, 2))]
    else:
        names = list(label_names) if label_names else sorted(set(raw) - {""})
        lookup = {n: i for i, n in enumerate(names)}
        labels = np.array([lookup.get(v, -1) for v in raw], dtype=np.int64)
    bad = (labels < 0) | (labels >= len(names))
    report.malformed_rows += [f"{path.name}:{ln}: label {v!r} not one of {names}"
                              for ln, v in zip(frame["line"][bad], raw[bad])]
    labels[bad] = -1
    if len(names) < 2:
        raise DataError(f"{path}: needs at least 2 classes, found {names}")
    return labels, names


def resolve_positive(names: list[str], positive: str | int | None, where: Path | str) -> int:
    """Index of the positive class: given by name or index, else the non-negative one of two classes
    (negative = 'normal', 'negative', '0', ...), else for three or more classes the last one (as RSNA's
    detailed labels: Lung Opacity; `positive_note` says so), else an error asking for --positive."""
    if positive is not None:
        text = str(positive)
        if text in names:
            return names.index(text)
        if text.isdigit() and int(text) < len(names):
            return int(text)
        raise DataError(f"{where}: positive class {positive!r} is not one of {names}")
    if len(names) == 2:
        negatives = [i for i, n in enumerate(names) if n.strip().lower() in NEGATIVE_NAMES]
        if len(negatives) == 1:
            return 1 - negatives[0]
    if len(names) > 2:  # a multiclass task needs no positive class: it only decides the binary summary keys
        return len(names) - 1
    raise DataError(f"{where}: {len(names)} classes {names}; say which is positive with --positive NAME")


def positive_note(names: Sequence[str], positive_index: int) -> str:
    """What the positive class of a multiclass set, chosen without --positive, is used for."""
    return (f"note: {len(names)} classes and no --positive: the binary keys of metrics.json (recall, specificity, "
            f"roc_auc, ...) compare {names[positive_index]!r} (the last class) against the rest; the per-class "
            "metrics cover every class; --positive NAME picks another")
