"""Read one DICOM/PNG/JPEG file into the uint8 `S x S` array a cache holds (the same path `prepare` uses).

`load_image(path, size)` is what predict/serve/explain call, so an image seen at inference goes through exactly
the decoding, normalisation, pad-to-square and resize that built the training cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medclf.data.dicom import (
    NORMS,
    deck_normalise,
    is_dicom,
    none_normalise,
    percentile_window,
    read_dicom,
)
from medclf.errors import DataError

DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
EMPTY_HEADER: dict[str, Any] = {"patient_id": "", "view": "", "sex": "", "age": None}


@dataclass
class Loaded:
    """One decoded image: `image` uint8 S x S, the header fields kept, the file's full (rows, cols)."""

    image: np.ndarray
    header: dict[str, Any]
    original_shape: tuple[int, int]


def load_image(path: str | Path, size: int, norm: str = "robust") -> np.ndarray:
    """One DICOM/PNG/JPEG file -> uint8 `size x size` (padded to square, never distorted)."""
    return load_with_info(path, size, norm).image


def load_with_info(path: str | Path, size: int | None, norm: str = "robust") -> Loaded:
    """Like `load_image`, also returning the header fields and original shape (for manifests and boxes).

    `size=None` keeps the (padded-to-square) native size.
    """
    if norm not in NORMS:
        raise DataError(f"unknown normalisation {norm!r}; valid: {', '.join(NORMS)}")
    path = Path(path)
    if is_dicom(path) or path.suffix.lower() in DICOM_SUFFIXES:
        dcm = read_dicom(path, norm=norm, target_size=size)
        pixels, header, shape = dcm.pixels, dcm.header, dcm.original_shape
    else:
        pixels, shape = _read_picture(path, norm, size)
        header = dict(EMPTY_HEADER)
    return Loaded(image=fit_square(pixels, size), header=header, original_shape=shape)


def _read_picture(path: Path, norm: str, size: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    """PNG/JPEG/TIFF -> float32 display values; colour is converted to luma (many exports are RGB greys)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            shape = (img.height, img.width)
            if size and img.format == "JPEG" and max(shape) >= 2 * size:
                img.draft("L", _draft_request(shape, size))  # DCT-scaled decode, as for DICOM JPEG
            if img.mode not in ("L", "I", "I;16", "I;16B", "I;16L", "F"):
                img = img.convert("L")
            raw = np.asarray(img)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image (expected DICOM, PNG or JPEG)") from None
    except (OSError, ValueError, SyntaxError) as err:  # truncated/corrupt streams
        raise DataError(f"{path}: cannot decode image ({' '.join(str(err).split())})") from None
    if raw.ndim != 2:
        raise DataError(f"{path}: expected a 2-D greyscale image, got shape {raw.shape}")
    return normalise_array(raw, norm), shape


def normalise_array(raw: np.ndarray, norm: str) -> np.ndarray:
    """Stored values of a non-DICOM image -> float32 [0, 255] (no LUTs exist outside DICOM)."""
    if norm == "robust":
        return percentile_window(raw)
    if norm == "deck":
        return deck_normalise(raw)
    return none_normalise(raw)


def _draft_request(shape: tuple[int, int], size: int) -> tuple[int, int]:
    side = max(shape)
    return (-(-shape[1] * size // side), -(-shape[0] * size // side))


def fit_square(pixels: np.ndarray, size: int | None) -> np.ndarray:
    """Pad (centred, black) to a square, then resize to `size` with antialiased bilinear -> uint8."""
    from PIL import Image

    arr = np.asarray(pixels, dtype=np.float32)
    h, w = arr.shape
    side = max(h, w)
    if h != w:
        square = np.zeros((side, side), dtype=np.float32)
        top, left = (side - h) // 2, (side - w) // 2
        square[top : top + h, left : left + w] = arr
        arr = square
    if size and size != side:
        # PIL's resize widens its filter when shrinking (antialiasing), like torchvision's Resize on PIL images
        arr = np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.BILINEAR))
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def box_transform(original_shape: tuple[int, int], size: int | None) -> tuple[float, float, float]:
    """(scale, pad_left, pad_top) mapping original pixel coordinates to cache pixels: x' = (x + pad_left) * scale."""
    h, w = original_shape
    side = max(h, w)
    scale = 1.0 if not size else size / side
    return scale, float((side - w) // 2), float((side - h) // 2)


def scale_boxes(boxes: list[list[float]], original_shape: tuple[int, int], size: int | None) -> list[list[float]]:
    """[x, y, w, h] boxes in original pixels -> cache pixels, rounded to 0.01."""
    scale, left, top = box_transform(original_shape, size)
    return [
        [round((x + left) * scale, 2), round((y + top) * scale, 2), round(bw * scale, 2), round(bh * scale, 2)]
        for x, y, bw, bh in boxes
    ]
