"""Probe: every DICOM bundled with pydicom (the files installed with it; nothing is downloaded) through the reader.

Whatever a file holds, the reader returns an image or refuses it with a one-line `DataError` naming it, within a
time bound; a MONOCHROME1 file comes out as the inverse of the same pixels read as MONOCHROME2. About 80 files,
~1 s in all.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from medclf.data.dicom import is_dicom, read_dicom
from medclf.errors import DataError


def _corpus() -> list[Path]:
    try:
        from pydicom.data import get_testdata_files
    except ImportError:  # pragma: no cover - pydicom is a dependency
        return []
    files = {Path(f) for f in get_testdata_files() if os.path.isfile(f)}  # local files only, never a download
    return sorted(f for f in files if f.suffix.lower() == ".dcm" or is_dicom(f))


CORPUS = _corpus()


def _id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def test_corpus_is_present():
    assert len(CORPUS) >= 60, "pydicom's bundled test files are missing"


# pydicom ships some images the reader refuses on purpose; these say why, so a change of wording is seen
KNOWN_REFUSALS = {
    "badVR.dcm": "invalid NumberOfFrames '1A' (expected an integer)",
    "17166": "image is flat after windowing (all pixels 31743)",  # CT whose window clips every pixel
    "MR_truncated.dcm": "less than expected (8130 vs 8192 bytes)",
    "meta_missing_tsyntax.dcm": "Rows, Columns, PhotometricInterpretation missing (required for an image)",
}


@pytest.mark.timeout(20)  # a hang is a failure (pytest-timeout), not a stuck suite
@pytest.mark.filterwarnings("ignore")  # pydicom warns about the odd files it is shipped to test
@pytest.mark.parametrize("path", CORPUS, ids=_id)
def test_reader_returns_or_refuses_cleanly(path: Path, tmp_path):
    for size in (None, 64):
        try:
            image = read_dicom(path, size=size)
        except DataError as err:
            message = str(err)
            assert message.startswith(f"{path}: ") and "\n" not in message, message
            if path.name in KNOWN_REFUSALS:
                assert KNOWN_REFUSALS[path.name] in message, message
            continue
        assert path.name not in KNOWN_REFUSALS
        pixels = image.pixels
        assert pixels.dtype == np.uint8 and pixels.ndim == 2 and pixels.size > 0
        if size:
            assert max(pixels.shape) == size
        if image.header["photometric"] == "MONOCHROME1":
            _assert_inverted(path, pixels, size, tmp_path)


def _assert_inverted(path: Path, pixels: np.ndarray, size: int | None, tmp_path: Path) -> None:
    import pydicom

    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "MONOCHROME2"
    twin = tmp_path / "as_mono2.dcm"
    ds.save_as(twin)
    as_mono2 = read_dicom(twin, size=size).pixels.astype(int)
    assert np.abs(pixels.astype(int) + as_mono2 - 255).max() <= 1
    assert abs(pixels.mean() - (255 - as_mono2.mean())) < 0.5


@pytest.mark.filterwarnings("ignore")
def test_corpus_has_monochrome1_images():
    import pydicom

    mono1 = [p for p in CORPUS if str(pydicom.dcmread(p, stop_before_pixels=True, force=True)
                                       .get("PhotometricInterpretation", "")) == "MONOCHROME1"]
    assert len(mono1) >= 3  # the CR files of pydicom's DICOMDIR test set: the inversion check above runs
