"""The reader on real radiographs (../shared/data/dicom-variants, rsna-sample); skipped when absent."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from medclf.data.dicom import read_dicom, render, stored_to_values
from medclf.data.imageio import load_image

pytestmark = pytest.mark.realdata


def test_monochrome1_twin_is_inverted(shared):
    variants = shared("dicom-variants")
    mono2 = load_image(next(variants.glob("siim_acr_*.dcm")), 256).astype(float)
    mono1 = load_image(variants / "txv_Fake_MONOHR1_header_modified.dcm", 256).astype(float)
    assert np.corrcoef(mono1.ravel(), mono2.ravel())[0, 1] < -0.999
    assert np.abs(mono1 + mono2 - 255).max() <= 1


def test_15bit_jpeg2000_decodes_to_a_sensible_range(shared):
    path = shared("dicom-variants", "RG1_J2KI.dcm")
    ds = pydicom.dcmread(path)
    raw = ds.pixel_array
    assert ds.BitsStored == 15 and raw.shape == (1955, 1841)
    assert 0 <= raw.min() and raw.max() < 2**15 and raw.max() > 2**14  # really uses the 15 bits
    img = read_dicom(path, size=256).pixels
    assert img.shape == (256, 241)  # long side 256, aspect kept (1841 / 1955 * 256 = 241.1)
    assert img.min() == 0 and img.max() == 255
    assert 40 < img.mean() < 215 and img.std() > 30
    # MONOCHROME1: bright stored values (dense tissue... in this photometric, background) become dark
    small = render(raw, "none", 256).astype(float)
    assert np.corrcoef(small.ravel(), img.astype(float).ravel())[0, 1] < -0.9


def test_jpeg2000_lossy_matches_lossless(shared):
    variants = shared("dicom-variants")
    lossy = load_image(variants / "RG3_J2KI.dcm", 256).astype(float)
    lossless = load_image(variants / "RG3_J2KR.dcm", 256).astype(float)
    assert np.abs(lossy - lossless).mean() < 1.0
    assert lossless.std() > 30


def test_draft_decode_matches_full_decode_and_resize(shared):
    files = sorted(shared("rsna-sample", "stage_2_train_images").glob("*.dcm"))[:12]
    diffs = []
    for path in files:
        fast = read_dicom(path, size=256)
        assert fast.draft and fast.pixels.shape == (256, 256)
        ds = pydicom.dcmread(path)
        full = render(stored_to_values(ds.pixel_array, ds, "robust"), "robust", 256)
        diffs.append(np.abs(fast.pixels.astype(float) - full).mean())
    assert max(diffs) < 2.0, diffs
    assert np.mean(diffs) < 1.0, diffs


def _as_dx(source, out):
    """A real radiograph re-labelled as Digital X-Ray (DX For Presentation), the class most modern DR devices write."""
    from pydicom.uid import DigitalXRayImageStorageForPresentation

    ds = pydicom.dcmread(source)
    ds.Modality = "DX"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.save_as(out)
    return out


def test_jpeg_baseline_8bit_and_dx_files_take_the_draft_path(shared, tmp_path):
    siim = next(shared("dicom-variants").glob("siim_acr_*.dcm"))
    rsna = sorted(shared("rsna-sample", "stage_2_train_images").glob("*.dcm"))[0]
    for path in (siim, rsna, _as_dx(siim, tmp_path / "dx.dcm")):
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50" and ds.BitsAllocated == 8
        img = read_dicom(path, size=256)
        assert img.draft and img.pixels.shape == (256, 256) and img.original_shape == (1024, 1024)
        assert img.pixels.min() == 0 and img.pixels.max() == 255 and img.pixels.std() > 30
        full = render(stored_to_values(ds.pixel_array, ds, "robust"), "robust", 256)
        assert np.abs(img.pixels.astype(float) - full).mean() < 2.0
    dx = read_dicom(tmp_path / "dx.dcm", size=256)
    assert dx.header["modality"] == "DX"
    np.testing.assert_array_equal(dx.pixels, read_dicom(siim, size=256).pixels)


def test_no_real_image_is_refused(shared):
    files = sorted(shared("rsna-sample", "stage_2_train_images").glob("*.dcm")) + sorted(
        shared("dicom-variants").glob("*.dcm"))
    assert len(files) == 115
    for path in files:
        assert read_dicom(path, size=64).pixels.std() > 10, path  # not flat, not refused
