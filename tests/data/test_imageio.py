"""One pixel limit for every format, checked from the header before decoding; one list of input suffixes."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from medclf.data.imageio import DICOM_SUFFIXES, IMAGE_SUFFIXES, INPUT_SUFFIXES, MAX_PIXELS, load_image
from medclf.errors import DataError


def png_claiming(path, width: int, height: int):
    """A small 16-bit PNG whose header claims `width x height` (the IHDR rewritten, its CRC recomputed): what a
    329 KB upload of a real 13000 x 13000 image looks like to `Image.open`, without building one here."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def test_limit_is_64_mpx():
    assert MAX_PIXELS == 64 * 2**20  # 8192 x 8192


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's, in Image.open, above 85 Mpx
@pytest.mark.parametrize("side, count", [(13000, "13000 x 13000 pixels"),  # ours, before Pillow decodes anything
                                         (14000, "196000000 pixels")])     # Pillow's own bomb error (> 179 Mpx)
def test_large_png_refused_from_its_header(tmp_path, side, count):
    path = png_claiming(tmp_path / "big.png", side, side)
    with pytest.raises(DataError) as err:
        load_image(path, 64)
    assert str(err.value) == f"{path}: image too large ({count}; at most 64 Mpx)"


def test_limit_can_be_set_per_call(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40), dtype=np.uint8)).save(path)
    assert load_image(path, 32).shape == (32, 32)
    with pytest.raises(DataError, match=r"a.png: image too large \(30 x 40 pixels; at most 0.000954 Mpx\)"):
        load_image(path, 32, max_pixels=1000)


def test_large_dicom_refused_from_its_header(dicom_writer, tmp_path):
    path = dicom_writer(tmp_path / "big.dcm", np.zeros((8, 8), np.uint8), Rows=9000, Columns=9000)
    with pytest.raises(DataError) as err:
        load_image(path, 64)
    assert str(err.value) == f"{path}: image too large (9000 x 9000 pixels; at most 64 Mpx)"


def test_deflated_dicom_is_bounded_before_pydicom_inflates_it(dicom_writer, tmp_path):
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    path = dicom_writer(tmp_path / "dfl.dcm", np.zeros((1024, 1024), np.uint16))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path)
    assert path.stat().st_size < 10_000  # 2 MiB of pixels
    with pytest.raises(DataError) as err:
        load_image(path, 64, max_pixels=4096)
    assert str(err.value) == (f"{path}: image too large (the deflated data set inflates to more than 1.02 MiB; "
                              f"at most 0.00391 Mpx)")
    with pytest.raises(DataError, match="image is flat"):  # under the default limit it is read (and is all zeros)
        load_image(path, 64)


def test_predict_and_prepare_folder_take_the_same_suffixes(tmp_path, dicom_writer):
    from medclf.engine.predict import expand_inputs

    assert INPUT_SUFFIXES == DICOM_SUFFIXES | IMAGE_SUFFIXES
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16), dtype=np.uint8)
    for name in ("a.tif", "b.bmp", "c.png", "d.jpg"):
        Image.fromarray(pixels).save(tmp_path / name)
    dicom_writer(tmp_path / "e.dic", pixels)
    (tmp_path / "notes.txt").write_text("not an image")
    found = expand_inputs([tmp_path])
    assert [p.name for p in found] == ["a.tif", "b.bmp", "c.png", "d.jpg", "e.dic"]
    assert all(load_image(p, 16).shape == (16, 16) for p in found)


def test_exif_orientation_is_applied(tmp_path):
    """A JPEG stored on its side with EXIF Orientation=6 (rotate 90 degrees clockwise to view) is read upright,
    as predict/explain/serve/prepare all read it (one reader)."""
    from medclf.data.imageio import load_with_info

    upright = np.zeros((48, 32), np.uint8)
    upright[:16, :16] = 255  # bright top-left corner, dark elsewhere
    Image.fromarray(upright).save(tmp_path / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = np.rot90(upright, 1)  # what a camera held sideways writes: 32 x 48, top-left corner now bottom-left
    Image.fromarray(np.ascontiguousarray(stored)).save(tmp_path / "sideways.jpg", quality=95, exif=exif)
    want = load_image(tmp_path / "upright.png", 48, norm="none")
    loaded = load_with_info(tmp_path / "sideways.jpg", 48, norm="none")
    assert loaded.original_shape == (48, 32)
    assert np.abs(loaded.image.astype(int) - want.astype(int)).mean() < 3
    assert loaded.image[4, 12] > 200 and loaded.image[40, 36] < 50  # upright: corner top-left, not elsewhere
