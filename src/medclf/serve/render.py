"""Pictures the API returns: the radiograph as the model saw it and the heatmap as a transparent colour layer
of the same size, both PNG in base64, so a page stacks them with no image processing of its own."""

from __future__ import annotations

import base64
import io

import numpy as np

COLORMAP = "turbo"
# Heat below this shows nothing, so the radiograph stays readable outside the regions that matter.
ALPHA_FLOOR = 0.2


def png_base64(array: np.ndarray) -> str:
    """uint8 `H x W` (grey) or `H x W x 4` (RGBA) -> base64 PNG text."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", compress_level=3)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def heat_rgba(cam: np.ndarray, size: int) -> np.ndarray:
    """A map in [0, 1] -> `size x size x 4` uint8: colour-mapped, opacity growing with the heat."""
    from matplotlib import colormaps
    from PIL import Image

    cam = np.clip(np.asarray(cam, dtype=np.float32), 0.0, 1.0)
    if cam.shape[0] != size:
        cam = np.clip(np.asarray(Image.fromarray(cam).resize((size, size), Image.Resampling.BILINEAR)), 0.0, 1.0)
    rgba = colormaps[COLORMAP](cam)
    rgba[..., 3] = np.clip((cam - ALPHA_FLOOR) / (1.0 - ALPHA_FLOOR), 0.0, 1.0) ** 0.7
    return np.rint(rgba * 255).astype(np.uint8)
