"""Read one DICOM file into a 2-D display array (higher = brighter) plus the header fields the manifest keeps.

Pipeline (`norm="robust"`, the default): decode -> modality LUT (rescale slope/intercept) -> VOI LUT or window
centre/width when the file has one -> percentile window 0.5-99.5 -> MONOCHROME1 inverted. `norm="deck"`
reproduces the seed deck: the stored pixel values divided by their maximum and truncated to uint8, nothing else.
docs/data.md says why the default is robust.

8-bit JPEG Baseline files (the RSNA format) are decoded at reduced scale by the JPEG decoder itself
(Pillow `Image.draft`) when the caller says how small the image will end up: that skips most of the
inverse DCT and is the main speed lever of `medclf prepare`.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medclf.errors import DataError

NORMS = ("robust", "deck", "none")
PERCENTILES = (0.5, 99.5)
# Transfer syntaxes whose single frame is a plain JPEG stream Pillow can decode with draft (DCT scaling).
_DRAFT_SYNTAXES = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"}
# Percentiles are taken on a strided view of at most ~this many pixels: same answer to a grey level, far cheaper.
_PERCENTILE_PIXELS = 512 * 512


@dataclass
class DicomImage:
    """`pixels`: float32 2-D in [0, 255], display orientation. With `draft` it is a reduced-scale decode;
    `original_shape` (Rows, Columns) is always the full size, which box coordinates refer to."""

    pixels: np.ndarray
    header: dict[str, Any]
    original_shape: tuple[int, int]
    draft: bool = False


def read_dicom(path: str | Path, *, norm: str = "robust", target_size: int | None = None) -> DicomImage:
    """Read and normalise one single-frame greyscale DICOM file.

    `target_size`: the side the image will be resized to afterwards; lets 8-bit JPEG files decode at reduced
    scale (never below `target_size` on the long side). Raises `DataError` naming the file for anything
    that is not a single-frame greyscale image with pixel data.
    """
    if norm not in NORMS:
        raise DataError(f"unknown normalisation {norm!r}; valid: {', '.join(NORMS)}")
    path = Path(path)
    ds = _read_dataset(path)
    _check_supported(ds, path)
    shape = (int(ds.Rows), int(ds.Columns))
    raw, draft = _decode(ds, path, target_size, shape)
    pixels = to_display(raw, ds, norm)
    return DicomImage(pixels=pixels, header=header_fields(ds), original_shape=shape, draft=draft)


def read_header(path: str | Path) -> dict[str, Any]:
    """The header fields we keep, without decoding pixels."""
    path = Path(path)
    return header_fields(_read_dataset(path, stop_before_pixels=True))


def is_dicom(path: str | Path) -> bool:
    """True when the file carries the DICOM preamble (`DICM` at byte 128)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _read_dataset(path: Path, stop_before_pixels: bool = False) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        raise DataError(f"{path}: not a DICOM file (no DICM preamble)") from None
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as err:  # truncated or corrupt files raise many different types inside pydicom
        raise DataError(f"{path}: cannot read DICOM ({type(err).__name__}: {_short(err)})") from None


def _check_supported(ds: Any, path: Path) -> None:
    if "PixelData" not in ds:
        raise DataError(f"{path}: no pixel data")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DataError(
            f"{path}: colour image not supported (PhotometricInterpretation={photometric or '?'}, "
            f"SamplesPerPixel={samples}); only greyscale MONOCHROME1/2"
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise DataError(f"{path}: multi-frame image not supported ({frames} frames)")
    if "Rows" not in ds or "Columns" not in ds:
        raise DataError(f"{path}: Rows/Columns missing")


def _decode(ds: Any, path: Path, target_size: int | None, shape: tuple[int, int]) -> tuple[np.ndarray, bool]:
    """Stored pixel values as a 2-D array; draft-decoded at reduced scale when possible."""
    if target_size and _can_draft(ds, target_size, shape):
        small = _draft_decode(ds, target_size, shape)
        if small is not None:
            return small, True
    try:
        arr = ds.pixel_array
    except Exception as err:  # decoder plugins raise their own types; the user needs the file and the gist
        syntax = ds.file_meta.get("TransferSyntaxUID", "?")
        name = getattr(syntax, "name", str(syntax))
        raise DataError(f"{path}: cannot decode pixel data ({name}: {_short(err)})") from None
    if arr.ndim != 2:
        raise DataError(f"{path}: expected a 2-D image, decoded shape {arr.shape}")
    return arr, False


def _can_draft(ds: Any, target_size: int, shape: tuple[int, int]) -> bool:
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    return (
        syntax in _DRAFT_SYNTAXES
        and int(ds.get("BitsAllocated", 0)) == 8
        and int(ds.get("PixelRepresentation", 0)) == 0
        and max(shape) >= 2 * target_size  # DCT scaling only helps from a factor of 2
    )


def _draft_decode(ds: Any, target_size: int, shape: tuple[int, int]) -> np.ndarray | None:
    """Decode the JPEG frame with DCT scaling; None means "use the normal decoder" (odd JPEG streams)."""
    from PIL import Image
    from pydicom.encaps import generate_frames

    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        img = Image.open(io.BytesIO(frame))
        side = max(shape)
        # draft keeps every side >= the request, so the long side stays >= target_size
        want = (math.ceil(shape[1] * target_size / side), math.ceil(shape[0] * target_size / side))
        img.draft("L", want)
        if img.mode != "L":
            return None
        arr = np.asarray(img)
    except Exception:  # Pillow refuses some valid DICOM JPEG streams; pydicom's decoders handle those
        return None
    return arr if arr.ndim == 2 else None


def to_display(raw: np.ndarray, ds: Any, norm: str) -> np.ndarray:
    """Stored values -> float32 [0, 255] display values (see module docstring)."""
    if norm == "deck":
        return deck_normalise(raw)
    if norm == "none":
        return none_normalise(raw)
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    arr = apply_modality_lut(raw, ds)
    if "VOILUTSequence" in ds or "WindowCenter" in ds:
        arr = apply_voi_lut(arr, ds)
    out = percentile_window(arr)
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        out = 255.0 - out
    return out


def percentile_window(arr: np.ndarray, percentiles: tuple[float, float] = PERCENTILES) -> np.ndarray:
    """Map [p_lo, p_hi] linearly to [0, 255], clipping outside; a flat image becomes all zeros."""
    arr = np.asarray(arr, dtype=np.float32)
    step = max(1, int(math.sqrt(arr.size / _PERCENTILE_PIXELS)))
    lo, hi = np.percentile(arr[::step, ::step], percentiles)
    if not hi > lo:
        return np.zeros_like(arr, dtype=np.float32)
    out = (arr - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    return np.clip(out, 0.0, 255.0, out=out)


def deck_normalise(raw: np.ndarray) -> np.ndarray:
    """The seed deck: `(img / img.max() * 255).astype(uint8)`, no LUTs, no inversion."""
    arr = np.asarray(raw, dtype=np.float64)
    peak = arr.max() if arr.size else 0.0
    if peak <= 0:
        return np.zeros(arr.shape, dtype=np.float32)
    return (arr / peak * 255.0).astype(np.uint8).astype(np.float32)


def none_normalise(raw: np.ndarray) -> np.ndarray:
    """Keep 8-bit values as they are (MedMNIST); wider ranges are min-max scaled to [0, 255]."""
    arr = np.asarray(raw)
    if arr.size and arr.min() >= 0 and arr.max() <= 255:
        return arr.astype(np.float32)
    arr = arr.astype(np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    return np.zeros_like(arr) if hi <= lo else (arr - lo) * np.float32(255.0 / (hi - lo))


def header_fields(ds: Any) -> dict[str, Any]:
    """patient_id, view, sex, age (years) plus a few descriptive fields; unknown values are ''/None."""
    return {
        "patient_id": str(ds.get("PatientID", "") or ""),
        "view": parse_view(ds.get("ViewPosition", ""), ds.get("SeriesDescription", "")),
        "sex": parse_sex(ds.get("PatientSex", "")),
        "age": parse_age(ds.get("PatientAge", "")),
        "modality": str(ds.get("Modality", "") or ""),
        "photometric": str(ds.get("PhotometricInterpretation", "") or ""),
        "bits_stored": int(ds.get("BitsStored", 0) or 0),
    }


def parse_view(view_position: Any, series_description: Any = "") -> str:
    """ViewPosition, else `view: PA` in SeriesDescription (the RSNA convention); upper-case, '' if unknown."""
    view = str(view_position or "").strip().upper()
    if view:
        return view
    match = re.search(r"view\s*:\s*([A-Za-z]+)", str(series_description or ""))
    return match.group(1).upper() if match else ""


def parse_sex(value: Any) -> str:
    sex = str(value or "").strip().upper()
    return sex if sex in ("M", "F", "O") else ""


_AGE_UNITS = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}


def parse_age(value: Any) -> float | None:
    """DICOM AS ('062Y', '006M') or a bare number ('62', RSNA's form) -> years; None if unparseable."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([YMWDymwd]?)\s*", str(value or ""))
    if not match:
        return None
    years = float(match.group(1)) * _AGE_UNITS[(match.group(2) or "Y").upper()]
    return float(int(years)) if years == int(years) else round(years, 2)


def _short(err: BaseException, limit: int = 120) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
