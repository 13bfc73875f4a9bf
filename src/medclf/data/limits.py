"""How large an input image may be: one pixel limit for every format, checked before any pixel is decoded.

`check_pixel_count` is the one check (the DICOM reader calls it with the header's Rows x Columns x frames,
`medclf.data.imageio` with Pillow's header size); `check_inflated_size` bounds a deflated DICOM before pydicom
inflates it. docs/data.md, "Size limit", gives the measured memory costs.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

from medclf.errors import DataError

# One limit for every format: Rows x Columns (x frames) above this is refused before decoding. 64 Mpx is an
# 8192 x 8192 image; decoding one at 16 bits costs about 1 GiB at peak, a 13000 x 13000 PNG 2 GiB.
MAX_PIXELS = 64 * 2**20
_DEFLATED = "1.2.840.10008.1.2.1.99"


def check_pixel_count(path: str | Path, rows: int, cols: int, frames: int = 1, *,
                      max_pixels: int = MAX_PIXELS) -> None:
    """Refuse an image of more than `max_pixels` pixels (rows x cols x frames), from its header, before decoding.

    The one size check of the data layer: `read_dicom` and `medclf.data.imageio.load_with_info` (hence
    predict, explain and serve) call it for every file they read.
    """
    if rows * cols * max(frames, 1) <= max_pixels:
        return
    raise too_large(path, f"{rows} x {cols} pixels" + (f" x {frames} frames" if frames > 1 else ""), max_pixels)


def too_large(path: str | Path, what: str, max_pixels: int = MAX_PIXELS) -> DataError:
    """The one wording of a size refusal: "PATH: image too large (WHAT; at most N Mpx)"."""
    return DataError(f"{path}: image too large ({what}; at most {max_pixels / 2**20:.3g} Mpx)")


def check_inflated_size(fh: Any, path: Path, max_pixels: int) -> None:
    """Bound a Deflated Explicit VR file before pydicom reads it.

    pydicom inflates a deflated data set whole, pixel data included, before any header value can be checked,
    and deflate reaches ~1000:1: a 20 MB upload could claim 20 GB. So inflate it here first, counting and
    discarding the output, and refuse more than the largest accepted image can need (no pydicom or zlib
    option does this).
    """
    if _transfer_syntax(fh, path) != _DEFLATED:
        return
    import pydicom

    length = pydicom.filereader.read_file_meta_info(path).get("FileMetaInformationGroupLength")
    if not isinstance(length, int):
        raise DataError(f"{path}: deflated data set without FileMetaInformationGroupLength (cannot bound its size)")
    limit = 5 * max_pixels + 2**20  # up to 32-bit pixels, 1 byte per pixel of overlays, 1 MiB of other elements
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    fh.seek(132 + 12 + length)  # preamble + DICM, the group length element, the rest of the file meta
    total = 0
    while not inflater.eof:
        data = inflater.unconsumed_tail or fh.read(1 << 16)
        if not data:
            break
        try:
            total += len(inflater.decompress(data, 1 << 20))
        except zlib.error:
            break  # pydicom reports the corrupt stream
        if total > limit:
            raise too_large(path, f"the deflated data set inflates to more than {limit / 2**20:.3g} MiB", max_pixels)
    fh.seek(0)


def _transfer_syntax(fh: Any, path: Path) -> str:
    """The file meta's TransferSyntaxUID: the explicit-VR (0002,0010) UI element in the first 4 KiB, where every
    conforming file has it, else pydicom's `read_file_meta_info` (~0.15 ms, 3 % of a decode: not on every file)."""
    head = fh.read(4096)
    fh.seek(0)
    at = head.find(b"\x02\x00\x10\x00UI", 132)
    if at >= 0:
        end = at + 8 + int.from_bytes(head[at + 6 : at + 8], "little")
        if end <= len(head):
            return head[at + 8 : end].rstrip(b"\x00 ").decode("ascii", "replace")
    import pydicom

    return str(pydicom.filereader.read_file_meta_info(path).get("TransferSyntaxUID", ""))
