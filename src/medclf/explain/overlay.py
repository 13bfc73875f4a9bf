"""Pictures of maps: the grey radiograph with a semi-transparent heat overlay, boxes and a caption.

The base stays the radiograph in grey (no false colour); the heat colour is blended in with an opacity that
grows with the map value, so regions the map ignores look exactly like the original image. Drawn with Pillow
and one matplotlib colormap lookup: no figure objects, so nothing accumulates over thousands of images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from medclf.io import atomic_path

BOX_COLOUR = (0, 255, 0)  # RSNA boxes: green reads well on grey and on the jet colours alike
TEXT_BG = (0, 0, 0)
TEXT_FG = (255, 255, 255)


def heat_colours(heat: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """`H x W` values in [0, 1] -> `H x W x 3` float RGB in [0, 1]."""
    from matplotlib import colormaps

    return colormaps[cmap](np.clip(heat, 0.0, 1.0))[..., :3]


def _resize(array: np.ndarray, side: int) -> np.ndarray:
    """Square float or uint8 2-D array -> `side x side` (bilinear)."""
    if array.shape == (side, side):
        return array
    as_float = array.dtype != np.uint8
    img = Image.fromarray(np.ascontiguousarray(array, dtype=np.float32 if as_float else np.uint8))  # mode F or L
    return np.asarray(img.resize((side, side), Image.Resampling.BILINEAR), dtype=np.float32 if as_float else np.uint8)


def heat_overlay(image: np.ndarray, heat: np.ndarray | None, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """uint8 grey `S x S` + map (any square size, [0, 1]) -> uint8 RGB `S x S x 3`; `heat=None`: the grey image."""
    grey = np.repeat(image.astype(np.float32)[..., None] / 255.0, 3, axis=2)
    if heat is None:
        return (grey * 255).round().astype(np.uint8)
    heat = np.clip(_resize(np.asarray(heat, dtype=np.float32), image.shape[0]), 0.0, 1.0)
    opacity = alpha * heat[..., None]
    rgb = grey * (1.0 - opacity) + heat_colours(heat, cmap) * opacity
    return (np.clip(rgb, 0.0, 1.0) * 255).round().astype(np.uint8)


def _font(side: int) -> ImageFont.ImageFont:
    size = max(9, side // 16)
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def annotate(rgb: np.ndarray, text: str | None = None, boxes: Sequence[Sequence[float]] = (),
             box_scale: float = 1.0) -> np.ndarray:
    """Draw `[x, y, w, h]` boxes (times `box_scale`) and a caption in the top-left corner; returns a copy."""
    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    width = max(1, rgb.shape[0] // 128)
    for x, y, w, h in boxes:
        x0, y0 = x * box_scale, y * box_scale
        draw.rectangle([x0, y0, x0 + w * box_scale - 1, y0 + h * box_scale - 1], outline=BOX_COLOUR, width=width)
    if text:
        font = _font(rgb.shape[0])
        left, top, right, bottom = draw.textbbox((3, 2), text, font=font)
        draw.rectangle([0, 0, right + 3, bottom + 3], fill=TEXT_BG)
        draw.text((3, 2), text, fill=TEXT_FG, font=font)
    return np.asarray(img)


def render(image: np.ndarray, heat: np.ndarray | None, text: str | None = None,
           boxes: Sequence[Sequence[float]] = (), min_side: int = 192, side: int | None = None,
           alpha: float = 0.5) -> np.ndarray:
    """One annotated panel, `side` pixels wide (default: the image's size, at least `min_side`, so captions
    stay legible on tiny images). `boxes` are in `image`'s pixels; they are scaled with it."""
    side = int(side) if side else max(int(image.shape[0]), int(min_side))
    base = _resize(np.asarray(image, dtype=np.uint8), side)
    return annotate(heat_overlay(base, heat, alpha), text, boxes, box_scale=side / image.shape[0])


def tile(rows: Sequence[Sequence[np.ndarray]], gap: int = 4, background: int = 255) -> np.ndarray:
    """A grid of equally sized RGB panels (rows may be shorter than the longest; the rest stays blank)."""
    h, w = rows[0][0].shape[:2]
    n_cols = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + gap) - gap, n_cols * (w + gap) - gap, 3), background, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, panel in enumerate(row):
            out[i * (h + gap): i * (h + gap) + h, j * (w + gap): j * (w + gap) + w] = panel
    return out


def save_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an RGB array as PNG atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")
    return path
