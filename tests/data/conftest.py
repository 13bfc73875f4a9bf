"""Synthetic DICOM files written with pydicom (every variant the reader must handle or refuse)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
                compress: str | None = None, **attrs) -> Path:
    """An uncompressed (or RLE-compressed) single-frame DICOM of `pixels` with extra header attributes."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    pixels = np.ascontiguousarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.Modality = "test-patient", "CR"
    colour = pixels.ndim == 3
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "RGB" if colour else photometric
    if colour:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = pixels.shape[:2]
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored = bits, bits_stored or bits
    ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.tobytes()
    if compress == "rle":
        from pydicom.uid import RLELossless

        ds.compress(RLELossless)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture()
def dicom_writer():
    """`write_dicom(path, pixels, photometric=..., bits_stored=..., compress=None|"rle", **header)`."""
    return write_dicom


def ramp(rows: int, cols: int, lo: int, hi: int, dtype=np.uint16) -> np.ndarray:
    """Each row is the same left-to-right ramp lo..hi (inclusive)."""
    return np.tile(np.linspace(lo, hi, cols).round().astype(dtype), (rows, 1))


@pytest.fixture()
def dicoms(tmp_path: Path) -> dict[str, Path]:
    """Name -> file: the variants the reader handles and the ones it must refuse."""
    d = tmp_path
    rng = np.random.default_rng(0)
    grey8 = rng.integers(0, 256, size=(24, 32)).astype(np.uint8)
    files = {
        # 12-bit stored, HU-like rescale, window in rescaled units (centre 0, width 200)
        "ct_window": write_dicom(d / "ct_window.dcm", ramp(8, 201, 0, 2048), bits_stored=12,
                                 RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=0, WindowWidth=200),
        "mono2": write_dicom(d / "mono2.dcm", grey8),
        "mono1": write_dicom(d / "mono1.dcm", grey8, photometric="MONOCHROME1"),
        "u16_rescale": write_dicom(d / "u16_rescale.dcm", ramp(16, 64, 100, 40000), bits_stored=16,
                                   RescaleSlope=2, RescaleIntercept=-500),
        "u16_plain": write_dicom(d / "u16_plain.dcm", ramp(16, 64, 100, 40000), bits_stored=16),
        "rle": write_dicom(d / "rle.dcm", ramp(16, 64, 100, 40000), bits_stored=16, compress="rle"),
        "window8": write_dicom(d / "window8.dcm", ramp(4, 256, 0, 255, np.uint8), WindowCenter=128, WindowWidth=64),
        "rgb": write_dicom(d / "rgb.dcm", rng.integers(0, 256, size=(8, 8, 3)).astype(np.uint8)),
        # two 8 x 8 frames stacked in PixelData
        "multiframe": write_dicom(d / "multiframe.dcm", rng.integers(0, 256, size=(16, 8)).astype(np.uint8),
                                  Rows=8, NumberOfFrames=2),
    }
    nopix = write_dicom(d / "nopixels.dcm", grey8)
    import pydicom

    ds = pydicom.dcmread(nopix)
    del ds.PixelData
    ds.save_as(nopix)
    files["nopixels"] = nopix
    files["fake"] = d / "fake.dcm"
    files["fake"].write_bytes(b"this is a text file, not DICOM\n" * 10)
    full = files["mono2"].read_bytes()
    files["truncated"] = d / "truncated.dcm"
    files["truncated"].write_bytes(full[: len(full) - 300])
    return files


@pytest.fixture(scope="session")
def synthetic_rsna(tmp_path_factory) -> Path:
    """40 synthetic patients in the RSNA layout (128 px JPEG DICOMs), shared read-only."""
    from medclf.data.synthetic import make_synthetic_rsna

    return make_synthetic_rsna(tmp_path_factory.mktemp("synthetic") / "rsna", n_patients=40, size=128, seed=0)


@pytest.fixture(scope="session")
def synthetic_cache(synthetic_rsna: Path, tmp_path_factory) -> Path:
    """The synthetic dataset prepared at 64 px with 2 workers (shared read-only)."""
    from medclf.data.prepare import prepare_rsna

    return prepare_rsna(synthetic_rsna / "stage_2_train_images", synthetic_rsna / "stage_2_train_labels.csv",
                        tmp_path_factory.mktemp("synthetic-cache") / "cache", size=64, workers=2, progress=False,
                        classes=synthetic_rsna / "stage_2_detailed_class_info.csv")
