"""Read one DICOM/PNG/JPEG file into the uint8 `S x S` array a cache holds (the same path `prepare` uses).

`load_image(path, size)` is what predict/serve/explain call, so an image seen at inference goes through exactly
the decoding, normalisation, pad-to-square and resize that built the training cache. Every file is checked
against one pixel limit (`medclf.data.limits`) from its header before its pixels are decoded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medclf.data.dicom import NORMS, is_dicom, read_dicom, render, resized_shape
from medclf.data.limits import MAX_PIXELS, check_pixel_count, too_large
from medclf.errors import DataError

DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
# What a folder of inputs is searched for, by `prepare folder` and `predict` alike.
INPUT_SUFFIXES = frozenset(DICOM_SUFFIXES | IMAGE_SUFFIXES)
_EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that turn the picture by 90 degrees
EMPTY_HEADER: dict[str, Any] = {"patient_id": "", "view": "", "sex": "", "age": None}


@dataclass
class Loaded:
    """One decoded image: `image` uint8 S x S, the header fields kept, the file's full (rows, cols)."""

    image: np.ndarray
    header: dict[str, Any]
    original_shape: tuple[int, int]


def load_image(path: str | Path, size: int, norm: str = "robust", *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """One DICOM/PNG/JPEG file -> uint8 `size x size` (long side resized, then padded to square with black)."""
    return load_with_info(path, size, norm, max_pixels=max_pixels).image


def load_with_info(path: str | Path, size: int | None, norm: str = "robust", *,
                   max_pixels: int = MAX_PIXELS) -> Loaded:
    """Like `load_image`, also returning the header fields and original shape (for manifests and boxes).

    `size=None` keeps the native size (padded to square). A file of more than `max_pixels` pixels is refused
    (`DataError`) from its header, before its pixels are decoded.
    """
    if norm not in NORMS:
        raise DataError(f"unknown normalisation {norm!r}; valid: {', '.join(NORMS)}")
    path = Path(path)
    if is_dicom(path) or path.suffix.lower() in DICOM_SUFFIXES:
        dcm = read_dicom(path, norm=norm, size=size, max_pixels=max_pixels)
        pixels, header, shape = dcm.pixels, dcm.header, dcm.original_shape
    else:
        pixels, shape = _read_picture(path, norm, size, max_pixels)
        header = dict(EMPTY_HEADER)
    return Loaded(image=pad_square(pixels, size), header=header, original_shape=shape)


def _read_picture(path: Path, norm: str, size: int | None,
                  max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, tuple[int, int]]:
    """PNG/JPEG/TIFF -> uint8 display image; colour is converted to luma (many exports are RGB greys).

    The EXIF orientation is applied (`ImageOps.exif_transpose`): a phone photo of a film stored on its side
    (`Orientation=6`) is read upright, as every viewer shows it; `shape` is the upright (rows, cols).

    `Image.open` reads the header only; the size is checked before `draft`/`convert`/`asarray` decode.
    Pillow's own decompression-bomb check (a warning above `Image.MAX_IMAGE_PIXELS`, ~89 Mpx, an error above
    twice that) runs inside `Image.open`, so its error is reported as the same "image too large".
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    from medclf.data.dicom import deck_normalise

    try:
        with Image.open(path) as img:
            shape = (img.height, img.width)
            check_pixel_count(path, *shape, max_pixels=max_pixels)
            if size and img.format == "JPEG" and max(shape) >= 2 * size:
                img.draft("L", _draft_request(shape, size))  # DCT-scaled decode, as for DICOM JPEG
            orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
            if orientation != 1:
                img = ImageOps.exif_transpose(img)
                shape = shape[::-1] if orientation in _SWAPS_AXES else shape
            if img.mode not in ("L", "I", "I;16", "I;16B", "I;16L", "F"):
                img = img.convert("L")
            raw = np.asarray(img)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image (expected DICOM, PNG or JPEG)") from None
    except Image.DecompressionBombError as err:  # Pillow refused in Image.open, before our check could run
        found = re.search(r"\((\d+) pixels\)", str(err))
        count = f"{found.group(1)} pixels" if found else "over Pillow's limit"
        raise too_large(path, count, max_pixels) from None
    except (OSError, ValueError, SyntaxError) as err:  # truncated/corrupt streams
        raise DataError(f"{path}: cannot decode image ({' '.join(str(err).split())})") from None
    if raw.ndim != 2:
        raise DataError(f"{path}: expected a 2-D greyscale image, got shape {raw.shape}")
    values = deck_normalise(raw) if norm == "deck" else raw  # no LUTs exist outside DICOM
    return render(values, norm, size), shape


def _draft_request(shape: tuple[int, int], size: int) -> tuple[int, int]:
    side = max(shape)
    return (-(-shape[1] * size // side), -(-shape[0] * size // side))


def pad_square(pixels: np.ndarray, size: int | None = None) -> np.ndarray:
    """Centre a uint8 image on a black `size x size` (default: its long side) canvas."""
    h, w = pixels.shape
    side = size or max(h, w)
    if (h, w) == (side, side):
        return np.ascontiguousarray(pixels, dtype=np.uint8)
    if h > side or w > side:
        raise ValueError(f"image {pixels.shape} larger than the {side} px square")
    out = np.zeros((side, side), dtype=np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    out[top : top + h, left : left + w] = pixels
    return out


def fit_square(pixels: np.ndarray, size: int | None) -> np.ndarray:
    """Already-normalised 8-bit values (e.g. MedMNIST) -> uint8 `size x size`: resize long side, pad."""
    return pad_square(render(np.asarray(pixels), "none", size), size)


def box_transform(original_shape: tuple[int, int], size: int | None) -> tuple[float, float, float]:
    """(scale, left, top) mapping original pixel coordinates to cache pixels: x' = x * scale + left."""
    h, w = original_shape
    side = max(h, w)
    target = size or side
    rows, cols = resized_shape(original_shape, target)
    return target / side, float((target - cols) // 2), float((target - rows) // 2)


def scale_boxes(boxes: list[list[float]], original_shape: tuple[int, int], size: int | None) -> list[list[float]]:
    """[x, y, w, h] boxes in original pixels -> cache pixels, rounded to 0.01."""
    scale, left, top = box_transform(original_shape, size)
    return [
        [round(x * scale + left, 2), round(y * scale + top, 2), round(bw * scale, 2), round(bh * scale, 2)]
        for x, y, bw, bh in boxes
    ]
