"""A small synthetic dataset in the exact RSNA challenge layout (not real patients), for the demo and tests.

`make_synthetic_rsna(out)` writes `stage_2_train_images/<id>.dcm` (8-bit MONOCHROME2, JPEG Baseline like the
real files, 128 px by default), `stage_2_train_labels.csv` (one row per box, several per positive patient) and
`stage_2_detailed_class_info.csv`, and `SYNTHETIC.json` beside them, which `prepare rsna` records in the cache
(`cache.json` -> `synthetic`) so that every run and report made from it says its data are made up. Each
picture is chest-like: a body, two darker lung fields with rib texture, a bright mediastinum and heart, noise.
Positives carry one or two bright, soft opacities inside the lungs, large enough that a tiny CNN learns them at
64 px in a few epochs. Same arguments, same bytes.

`write_synthetic_multilabel(out)` writes a multi-label cache directly (task `multilabel`, medclf.tasks): three
findings drawn as clearly different bright shapes (a filled "disc", a "square" outline, a horizontal "bar"),
each in its own quadrant on a noisy dark background and present independently (probability 0.35 by default), so
an image holds none, one, two or all three. A small CNN learns every label to ROC AUC ~1 in a few CPU epochs at
48 px from the default 600 images (fewer images learn more slowly). Its cache.json carries the same
`synthetic` entry as a cache prepared from `make_synthetic_rsna`'s files.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from medclf.data.cache import write_cache
from medclf.data.splits import split_patients
from medclf.io import read_json, write_json, write_text
from medclf.labelsets import encode_multi_hot, label_set_name, rarest_label

DETAILED = ("Normal", "No Lung Opacity / Not Normal", "Lung Opacity")
MARKER = "SYNTHETIC.json"  # beside the label CSVs: the dataset was made here, not taken from patients


def synthetic_marker(labels_csv: str | Path) -> dict | None:
    """What `make_synthetic_rsna` recorded beside `labels_csv`, or None for real data."""
    path = Path(labels_csv).parent / MARKER
    if not path.is_file():
        return None
    return read_json(path)


def make_synthetic_rsna(out_dir: str | Path, n_patients: int = 40, size: int = 128, seed: int = 0,
                        pos_frac: float = 0.3) -> Path:
    """Write the dataset under `out_dir` and return `out_dir`; patient ids are `synthetic-0000`, ..."""
    out_dir = Path(out_dir)
    image_dir = out_dir / "stage_2_train_images"
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    positive = np.zeros(n_patients, dtype=bool)
    positive[rng.permutation(n_patients)[: int(round(n_patients * pos_frac))]] = True
    grid = _grid(size)
    label_rows, class_rows = [], []
    for i in range(n_patients):
        pid = f"synthetic-{i:04d}"
        picture, boxes = _chest(grid, size, rng, bool(positive[i]))
        view = "PA" if rng.random() < 0.55 else "AP"
        sex = "M" if rng.random() < 0.55 else "F"
        age = int(rng.integers(18, 86))
        _write_dicom(image_dir / f"{pid}.dcm", picture, pid, view, sex, age)
        if boxes:
            label_rows += [(pid, *map(float, b), 1) for b in boxes]
            class_rows += [(pid, DETAILED[2])] * len(boxes)
        else:
            label_rows.append((pid, None, None, None, None, 0))
            class_rows.append((pid, DETAILED[int(rng.random() < 0.4)]))
    labels = pd.DataFrame(label_rows, columns=["patientId", "x", "y", "width", "height", "Target"])
    labels.to_csv(out_dir / "stage_2_train_labels.csv", index=False, lineterminator="\n")
    pd.DataFrame(class_rows, columns=["patientId", "class"]).to_csv(
        out_dir / "stage_2_detailed_class_info.csv", index=False, lineterminator="\n")
    write_json(out_dir / MARKER, {"note": "synthetic images made by medclf (not real patients)",
                                  "generator": "medclf.data.synthetic.make_synthetic_rsna",
                                  "n_patients": n_patients, "size": size, "seed": seed, "pos_frac": pos_frac})
    return out_dir


SHAPES = ("disc", "square", "bar")  # the findings of write_synthetic_multilabel, in label-index order


def write_synthetic_multilabel(out: str | Path, n: int = 600, size: int = 48, seed: int = 0, val: float = 0.15,
                               test: float = 0.15, p: float = 0.35, overwrite: bool = False) -> Path:
    """Write a multi-label cache of `n` images (one per patient) at `out` and return `out`.

    The split is patient-grouped and stratified by each image's rarest label (medclf.tasks.rarest_label), so
    every finding lands in each split. Same arguments, same cache (content_hash).
    """
    images, present = _shapes_set(n, size, seed, p)
    masks = encode_multi_hot(present)
    ids = [f"synthetic-{i:04d}" for i in range(n)]
    split = split_patients(rarest_label(masks, len(SHAPES)), ids, val, test, seed)
    manifest = pd.DataFrame({"id": ids, "patient_id": ids, "label": masks, "split": split})
    params = {"n": n, "size": size, "seed": seed, "val": val, "test": test, "p": p}
    marker = {"note": "synthetic images made by medclf (not real patients)",
              "generator": "medclf.data.synthetic.write_synthetic_multilabel", **params}
    meta = {"source": "synthetic", "label_names": list(SHAPES), "positive_index": 0, "task": "multilabel",
            "label_mode": "multilabel", "params": params, "synthetic": marker}
    return write_cache(out, images, manifest, meta, overwrite=overwrite)


def write_synthetic_multilabel_files(out: str | Path, n: int = 600, size: int = 48, seed: int = 0,
                                     p: float = 0.35) -> Path:
    """The same pictures as `write_synthetic_multilabel`, as files for `medclf prepare folder`: `out/images/*.png`
    and `out/labels.csv` (`path,label,patient_id`, the label ChestX-ray14 style: `disc|bar`, `No Finding`)."""
    from PIL import Image

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, present = _shapes_set(n, size, seed, p)
    rows = []
    for i, (image, row) in enumerate(zip(images, present)):
        name = f"synthetic-{i:04d}.png"
        Image.fromarray(image).save(out / "images" / name)
        rows.append({"path": name, "label": label_set_name(int(encode_multi_hot(row[None])[0]), SHAPES),
                     "patient_id": f"synthetic-{i:04d}"})
    write_text(out / "labels.csv", pd.DataFrame(rows).to_csv(index=False, lineterminator="\n"))
    return out


def _shapes_set(n: int, size: int, seed: int, p: float) -> tuple[np.ndarray, np.ndarray]:
    """`n` pictures (uint8 n x size x size) and which shapes each holds (bool n x 3), reproducibly."""
    rng = np.random.default_rng(seed)
    present = rng.random((n, len(SHAPES))) < p
    return np.stack([_shapes_picture(size, row, rng) for row in present]), present


def _shapes_picture(size: int, present: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The present shapes, each in its own quadrant (so none hides another) with jitter, on noise."""
    img = rng.normal(30.0, 8.0, size=(size, size)).astype(np.float32)
    v, u = np.mgrid[0:size, 0:size].astype(np.float32)
    quadrants = rng.permutation(4)
    half = size / 2
    for k in np.flatnonzero(present):
        q = quadrants[k]
        cu = (q % 2 + 0.5) * half + rng.uniform(-0.05, 0.05) * size
        cv = (q // 2 + 0.5) * half + rng.uniform(-0.05, 0.05) * size
        img[_shape_mask(SHAPES[k], u - cu, v - cv, size)] = rng.uniform(200.0, 240.0)
    img += rng.normal(0.0, 6.0, size=img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _shape_mask(shape: str, du: np.ndarray, dv: np.ndarray, size: int) -> np.ndarray:
    """Pixels of one shape centred at du = dv = 0; the three differ in outline, not in brightness."""
    r = size / 6  # big enough for a tiny CNN at 48 px
    if shape == "disc":
        return du**2 + dv**2 <= r**2
    if shape == "square":  # an outline: edges inside the shape, unlike the filled disc
        side = np.maximum(np.abs(du), np.abs(dv))
        return (side <= 0.9 * r) & (side >= 0.45 * r)
    return (np.abs(du) <= 1.2 * r) & (np.abs(dv) <= 0.35 * r)  # horizontal: flips keep it a bar


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    v, u = np.mgrid[0:size, 0:size].astype(np.float32) / np.float32(size)
    return u, v


def _ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, ru: float, rv: float,
             soft: float = 0.08) -> np.ndarray:
    """1 inside, 0 outside, with a soft edge (anatomy has no hard borders)."""
    d = np.sqrt(((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2)
    return np.clip((1.0 - d) / soft, 0.0, 1.0)


def _chest(grid: tuple[np.ndarray, np.ndarray], size: int, rng: np.random.Generator,
           positive: bool) -> tuple[np.ndarray, list[list[int]]]:
    u, v = grid
    img = np.full(u.shape, 18.0, dtype=np.float32)
    img += 100.0 * _ellipse(u, v, 0.5, 0.56, 0.47, 0.55, soft=0.05)  # body soft tissue
    lungs = []
    for side in (-1, 1):
        cu = 0.5 + side * rng.uniform(0.18, 0.21)
        lung = (cu, rng.uniform(0.44, 0.48), rng.uniform(0.12, 0.14), rng.uniform(0.27, 0.31))
        lungs.append(lung)
        img -= rng.uniform(55.0, 65.0) * _ellipse(u, v, *lung)
    in_lung = np.maximum(_ellipse(u, v, *lungs[0]), _ellipse(u, v, *lungs[1]))
    ribs = 0.5 + 0.5 * np.sin(2 * np.pi * (7.0 * v + 3.0 * (u - 0.5) ** 2 + rng.uniform(0, 1)))
    img += 22.0 * ribs**4 * in_lung
    img += 60.0 * np.clip((0.05 - np.abs(u - 0.5)) / 0.02, 0, 1) * (v > 0.1)  # spine / mediastinum
    img += 55.0 * _ellipse(u, v, 0.54, 0.64, rng.uniform(0.10, 0.13), 0.11)  # heart
    boxes = _add_opacities(img, u, v, lungs, size, rng) if positive else []
    img += rng.normal(0.0, 5.0, size=img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), boxes


def _add_opacities(img: np.ndarray, u: np.ndarray, v: np.ndarray, lungs: list[tuple[float, ...]], size: int,
                   rng: np.random.Generator) -> list[list[int]]:
    """One or two bright, flat-topped patches (consolidation-like) inside the lungs; boxes span +-2 sigma."""
    boxes = []
    chosen = [0, 1] if rng.random() < 0.35 else [int(rng.integers(2))]
    for k in chosen:
        cu, cv, ru, rv = lungs[k]
        bu, bv = cu + rng.uniform(-0.35, 0.35) * ru, cv + rng.uniform(-0.4, 0.45) * rv
        sigma = rng.uniform(0.065, 0.085)
        blob = np.exp(-((((u - bu) ** 2 + (v - bv) ** 2) / (2 * sigma**2)) ** 2))  # super-Gaussian: flat top
        img += rng.uniform(110.0, 130.0) * blob
        x0, y0 = max(0, int((bu - 2 * sigma) * size)), max(0, int((bv - 2 * sigma) * size))
        x1, y1 = min(size, int(np.ceil((bu + 2 * sigma) * size))), min(size, int(np.ceil((bv + 2 * sigma) * size)))
        boxes.append([x0, y0, x1 - x0, y1 - y0])
    return boxes


def _write_dicom(path: Path, pixels: np.ndarray, pid: str, view: str, sex: str, age: int) -> None:
    """An RSNA-style file: Secondary Capture, CR, 8-bit MONOCHROME2, JPEG Baseline, fixed UIDs (deterministic)."""
    from PIL import Image
    from pydicom.config import disable_value_validation
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, SecondaryCaptureImageStorage, generate_uid

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    sop_uid = generate_uid(entropy_srcs=[pid, "sop"])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, sop_uid
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[pid, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[pid, "series"])
    ds.PatientName, ds.PatientID, ds.PatientSex = pid, pid, sex
    with disable_value_validation():  # RSNA stores the age without DICOM's 'Y' suffix; so do we
        ds.PatientAge = str(age)
    ds.Modality, ds.BodyPartExamined, ds.ConversionType = "CR", "CHEST", "WSD"
    ds.SeriesDescription, ds.ViewPosition = f"view: {view}", view
    ds.StudyDate, ds.StudyTime = "19010101", "000000.00"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.LossyImageCompression = "01"
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
