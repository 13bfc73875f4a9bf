"""Read one DICOM file into a 2-D uint8 display image (higher = brighter) plus the header fields we keep.

Pipeline (`norm="robust"`, the default): decode -> modality LUT (rescale slope/intercept) -> VOI LUT or window
centre/width when the file has one -> resize (long side to the target size, aspect kept) -> percentile window
0.5-99.5 -> MONOCHROME1 inverted. The percentiles are taken on the resized image, so a draft (reduced-scale)
decode and a full decode get the same window. `norm="deck"` reproduces the seed deck: stored values / max,
truncated to uint8, resized; no LUTs, no inversion. `norm="none"` keeps 8-bit values (MedMNIST).
docs/data.md says why the default is robust.

8-bit JPEG Baseline files (the RSNA format) are decoded at reduced scale by the JPEG decoder itself
(Pillow `Image.draft`) when the target size allows: that skips most of the inverse DCT and is the main speed
lever of `medclf prepare`.

Every refusal is a one-line `DataError` naming the file. The pixel limit (`medclf.data.limits`) is checked on
the header, before any pixel is decoded.
"""

from __future__ import annotations

import io
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medclf.data.limits import MAX_PIXELS, check_inflated_size, check_pixel_count
from medclf.errors import DataError

NORMS = ("robust", "deck", "none")
PERCENTILES = (0.5, 99.5)
# Transfer syntaxes whose single frame is a plain JPEG stream Pillow can decode with draft (DCT scaling).
_DRAFT_SYNTAXES = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"}
# Percentiles are taken on a strided view of at most ~this many pixels: same answer to a grey level, far cheaper.
_PERCENTILE_PIXELS = 512 * 512
# Decoder messages are kept whole (they say what is wrong at the end); this only bounds a pathological one.
_MESSAGE_LIMIT = 1000


@dataclass
class DicomImage:
    """`pixels`: uint8 2-D display image, long side = `size` when one was given (not padded).
    `original_shape` (Rows, Columns) is the full size, which box coordinates refer to; `draft` says the JPEG
    decoder produced a reduced-scale image directly."""

    pixels: np.ndarray
    header: dict[str, Any]
    original_shape: tuple[int, int]
    draft: bool = False


def read_dicom(path: str | Path, *, norm: str = "robust", size: int | None = None,
               max_pixels: int = MAX_PIXELS) -> DicomImage:
    """Read, normalise and resize (long side to `size`, None = native) one single-frame greyscale DICOM.

    Raises `DataError` naming the file for anything that is not a single-frame greyscale image with pixels, for
    invalid header values, for more than `max_pixels` pixels (checked before decoding) and, with
    `norm="robust"`, for an image that is flat after its LUT/window step (it would come out all black).
    """
    if norm not in NORMS:
        raise DataError(f"unknown normalisation {norm!r}; valid: {', '.join(NORMS)}")
    path = Path(path)
    ds = _read_dataset(path, max_pixels=max_pixels)
    shape = _check_supported(ds, path, max_pixels)
    raw, draft = _decode(ds, path, size, shape)
    invert = norm == "robust" and str(ds.PhotometricInterpretation) == "MONOCHROME1"
    try:
        values = stored_to_values(raw, ds, norm)
    except Exception as err:  # pydicom's LUT functions raise bare ValueError/TypeError on malformed LUT elements
        raise DataError(f"{path}: cannot apply the modality/VOI LUT ({type(err).__name__}: {_one_line(err)})") from None
    pixels = render(values, norm, size, invert=invert, name=path)
    return DicomImage(pixels=pixels, header=header_fields(ds), original_shape=shape, draft=draft)


def preload() -> None:
    """Import the decoders this module loads lazily; called before forking workers so they inherit them."""
    import PIL.JpegImagePlugin  # noqa: F401
    import PIL.PngImagePlugin  # noqa: F401
    import pydicom.encaps  # noqa: F401
    import pydicom.pixels  # noqa: F401


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


def _read_dataset(path: Path, stop_before_pixels: bool = False, max_pixels: int = MAX_PIXELS) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with open(path, "rb") as fh:
            if not stop_before_pixels:
                check_inflated_size(fh, path, max_pixels)
            ds = pydicom.dcmread(fh, stop_before_pixels=stop_before_pixels)
            stopped_at, size = fh.tell(), os.fstat(fh.fileno()).st_size
    except DataError:
        raise
    except InvalidDicomError:
        raise DataError(f"{path}: not a DICOM file (no DICM preamble)") from None
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as err:  # truncated or corrupt files raise many different types inside pydicom
        raise DataError(f"{path}: cannot read DICOM ({type(err).__name__}: {_one_line(err)})") from None
    # Truncation is decided from the file's own structure, not from pydicom's warning: catching warnings swaps
    # process-wide state (`warnings.catch_warnings` is not thread-safe), so concurrent reads saw each other's
    # warnings. pydicom stops, and only warns, when an undefined-length value (encapsulated pixel data, a
    # sequence) has no end delimiter: it has then not read to the end of the file. Pixel data of defined length
    # cut short is reported by the decoder, with both byte counts.
    if not stop_before_pixels and stopped_at < size:
        raise DataError(f"{path}: file is truncated (ends inside a data element)")
    return ds


def _check_supported(ds: Any, path: Path, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """Every header value the reader uses, validated; (Rows, Columns). Nothing is decoded before this passes."""
    if "PixelData" not in ds:
        raise DataError(f"{path}: no pixel data")
    missing = [k for k in ("Rows", "Columns", "PhotometricInterpretation") if _element(ds, k, path) in (None, "")]
    if missing:
        raise DataError(f"{path}: {', '.join(missing)} missing (required for an image)")
    rows, cols = _int_element(ds, "Rows", path), _int_element(ds, "Columns", path)
    frames = _int_element(ds, "NumberOfFrames", path, 1) or 1
    check_pixel_count(path, rows, cols, frames, max_pixels=max_pixels)
    samples = _int_element(ds, "SamplesPerPixel", path, 1) or 1
    photometric = str(ds.PhotometricInterpretation)
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DataError(
            f"{path}: colour image not supported (PhotometricInterpretation={photometric}, "
            f"SamplesPerPixel={samples}); only greyscale MONOCHROME1/2"
        )
    if frames != 1:
        raise DataError(f"{path}: multi-frame image not supported ({frames} frames)")
    for keyword in ("BitsAllocated", "BitsStored", "PixelRepresentation"):
        _int_element(ds, keyword, path, 0)
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        _number_element(ds, keyword, path)
    return rows, cols


def _element(ds: Any, keyword: str, path: Path) -> Any:
    try:
        return ds.get(keyword)
    except Exception as err:  # pydicom converts a raw value on first access and may raise then
        raise DataError(f"{path}: invalid {keyword} ({_one_line(err)})") from None


def _int_element(ds: Any, keyword: str, path: Path, default: int | None = None) -> int:
    """An integer header value; `default` when absent or empty (None: required).

    Hand-written because pydicom keeps an invalid IS/US value as its text ('1A') and only warns, so a plain
    `int()` raised a bare ValueError that escaped `DataError` (and `--skip-bad`).
    """
    value = _element(ds, keyword, path)
    if value is None or value == "":
        if default is None:
            raise DataError(f"{path}: {keyword} missing")
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DataError(f"{path}: invalid {keyword} {str(value)!r} (expected an integer)") from None


def _number_element(ds: Any, keyword: str, path: Path) -> None:
    value = _element(ds, keyword, path)
    if value is None or value == "":
        return
    try:
        ok = math.isfinite(float(value))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise DataError(f"{path}: invalid {keyword} {str(value)!r} (expected a finite number)")


def _decode(ds: Any, path: Path, target_size: int | None, shape: tuple[int, int]) -> tuple[np.ndarray, bool]:
    """Stored pixel values as a 2-D array; draft-decoded at reduced scale (long side >= target) when possible."""
    if target_size and _can_draft(ds, target_size, shape):
        small = _draft_decode(ds, target_size, shape)
        if small is not None:
            return small, True
    try:
        arr = ds.pixel_array
    except Exception as err:  # decoder plugins raise their own types; the user needs the file and the gist
        syntax = ds.file_meta.get("TransferSyntaxUID", "?")
        name = getattr(syntax, "name", str(syntax))
        raise DataError(f"{path}: cannot decode pixel data ({name}: {_one_line(err)})") from None
    if arr.ndim != 2:
        raise DataError(f"{path}: expected a 2-D image, decoded shape {arr.shape}")
    return arr, False


def _can_draft(ds: Any, target_size: int, shape: tuple[int, int]) -> bool:
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    return (
        syntax in _DRAFT_SYNTAXES
        and int(ds.get("BitsAllocated", 0) or 0) == 8  # validated by _check_supported
        and int(ds.get("PixelRepresentation", 0) or 0) == 0
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


def stored_to_values(raw: np.ndarray, ds: Any, norm: str) -> np.ndarray:
    """Before resizing: robust applies the modality and VOI LUTs (pointwise, so at full resolution), deck
    scales to the seed deck's uint8, none keeps the stored values."""
    if norm == "deck":
        return deck_normalise(raw)
    if norm == "none":
        return raw
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = raw
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    if "ModalityLUTSequence" in ds or slope != 1 or intercept != 0:  # identity skipped: keeps uint8 fast paths
        values = apply_modality_lut(values, ds)
    if "VOILUTSequence" in ds or "WindowCenter" in ds:
        values = apply_voi_lut(values, ds)
    return values


def render(values: np.ndarray, norm: str, size: int | None, invert: bool = False, *,
           name: str | Path | None = None) -> np.ndarray:
    """Values -> uint8 display image with the long side resized to `size` (aspect kept, not padded).

    Resizing comes before the percentile window so the window is measured on the image as stored, whatever
    the decode scale (draft or full) was. When more than 99 % of the pixels share one value (the percentiles
    meet), robust windows min..max instead, so the rest still shows. A robust image with a single value is
    refused naming the file `name` when one is given (the DICOM reader: its LUT/window left nothing to see);
    without `name` it renders black.
    """
    small = resize_long_side(values, size)
    if norm == "robust":
        lo, hi = image_percentiles(small)
        if not hi > lo:
            lo, hi = float(np.min(small)), float(np.max(small))
            if not hi > lo and name is not None:
                raise DataError(f"{name}: image is flat after windowing (all pixels {lo:g})")
        if small.dtype == np.uint8:  # the 8-bit (RSNA) hot path: same arithmetic on the 256 values, then a lookup
            return _to_uint8(window(np.arange(256, dtype=np.float32), lo, hi), invert)[small]
        return _to_uint8(window(small, lo, hi), invert)
    if norm == "none":
        out = none_normalise(small)
    else:
        out = small
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def resized_shape(shape: tuple[int, int], size: int | None) -> tuple[int, int]:
    """(rows, cols) after scaling the long side of `shape` to `size`."""
    if not size:
        return shape
    side = max(shape)
    return max(1, round(shape[0] * size / side)), max(1, round(shape[1] * size / side))


def resize_long_side(values: np.ndarray, size: int | None) -> np.ndarray:
    """Antialiased bilinear resize (PIL widens the filter when shrinking, like torchvision on PIL images);
    uint8 stays uint8 (PIL 'L', the seed deck's path), anything else is resized as float32."""
    from PIL import Image

    rows, cols = resized_shape(values.shape, size)
    if (rows, cols) == values.shape:
        return values
    arr = values if values.dtype == np.uint8 else np.asarray(values, dtype=np.float32)
    return np.asarray(Image.fromarray(arr).resize((cols, rows), Image.Resampling.BILINEAR))


def window(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    arr = np.asarray(arr, dtype=np.float32)
    if not hi > lo:
        return np.zeros_like(arr, dtype=np.float32)
    out = (arr - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    return np.clip(out, 0.0, 255.0, out=out)


def _to_uint8(display: np.ndarray, invert: bool) -> np.ndarray:
    """Round [0, 255] floats to uint8; MONOCHROME1 is inverted before rounding."""
    return np.rint(255.0 - display if invert else display).astype(np.uint8)


def image_percentiles(arr: np.ndarray, percentiles: tuple[float, float] = PERCENTILES) -> tuple[float, float]:
    """np.percentile's default (linear) definition; 8-bit images go through a 256-bin histogram instead of a
    sort (4x faster, same values), large images through a strided sample of ~512^2 pixels."""
    arr = np.asarray(arr)
    step = max(1, int(math.sqrt(arr.size / _PERCENTILE_PIXELS)))
    sample = arr[::step, ::step] if arr.ndim == 2 else arr
    if sample.dtype != np.uint8:
        lo, hi = np.percentile(sample, percentiles)
        return float(lo), float(hi)
    cdf = np.cumsum(np.bincount(sample.ravel(), minlength=256))
    out = []
    for q in percentiles:
        pos = q / 100.0 * (sample.size - 1)  # rank as np.percentile's linear method defines it
        below, above = int(math.floor(pos)), int(math.ceil(pos))
        v_lo, v_hi = np.searchsorted(cdf, [below + 1, above + 1])  # value of the k-th smallest (0-based k)
        out.append(float(v_lo + (v_hi - v_lo) * (pos - below)))
    return out[0], out[1]


def deck_normalise(raw: np.ndarray) -> np.ndarray:
    """The seed deck: `(img / img.max() * 255).astype(uint8)`, no LUTs, no inversion."""
    arr = np.asarray(raw, dtype=np.float64)
    peak = arr.max() if arr.size else 0.0
    if peak <= 0:
        return np.zeros(arr.shape, dtype=np.uint8)
    return (arr / peak * 255.0).astype(np.uint8)


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
        "bits_stored": _int_or_zero(ds, "BitsStored"),
    }


def _int_or_zero(ds: Any, keyword: str) -> int:
    """Header fields are descriptive: an unreadable value is unknown (0), not an error (read_dicom validates)."""
    try:
        return int(ds.get(keyword, 0) or 0)
    except Exception:
        return 0


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


def _one_line(err: BaseException, limit: int = _MESSAGE_LIMIT) -> str:
    """The error's whole message on one line (decoders put the reason at the end, after their plugin list)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
