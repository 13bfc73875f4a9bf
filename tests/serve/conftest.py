"""Fixtures for the web service tests: one tiny trained run, its predictor, sample files of every type."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def serve_run(tiny_cache: Path, scratch, request) -> Path:
    """resnet18 at 32 px, one epoch on the tiny cache (a few seconds)."""
    from medclf.config import load_config
    from medclf.engine.train import train

    cfg = load_config(None, ["model.name=resnet18", "model.input_size=32", "data.batch_size=8", "train.epochs=1"])
    return train(cfg, tiny_cache, scratch(request, "serve") / "run", progress=False)


@pytest.fixture(scope="session")
def predictor(serve_run: Path):
    from medclf.serve.predictor import ServeModel

    return ServeModel.load(serve_run, "cpu")


@pytest.fixture(scope="session")
def ensemble_run(serve_run: Path, scratch, request) -> Path:
    """An ensemble run of two identical members (copies of serve_run): its answers must equal the single run's."""
    from medclf.io import write_json
    from medclf.models.checkpoint import read_checkpoint
    from medclf.runs import ENSEMBLE_FORMAT

    root = scratch(request, "serve-ens") / "ens"
    for i in range(2):
        (root / "members" / str(i)).mkdir(parents=True)
        shutil.copy(serve_run / "best.pt", root / "members" / str(i) / "best.pt")
    shutil.copy(serve_run / "data_summary.json", root / "data_summary.json")
    threshold = read_checkpoint(serve_run / "best.pt")["contract"]["threshold"]
    write_json(root / "ensemble.json", {"format": ENSEMBLE_FORMAT, "format_version": 1, "mode": "models",
                                        "combine": "mean", "members": ["members/0", "members/1"],
                                        "weights": [0.5, 0.5], "threshold": threshold})
    return root


@pytest.fixture(scope="session")
def sample_files(tmp_path_factory, tiny_cache: Path) -> dict[str, Path]:
    """A synthetic chest DICOM (96 px, JPEG Baseline, as RSNA ships them), a PNG and a JPEG of cache images."""
    from PIL import Image

    from medclf.data.cache import Cache
    from medclf.data.synthetic import make_synthetic_rsna

    root = tmp_path_factory.mktemp("serve-files")
    rsna = make_synthetic_rsna(root / "rsna", n_patients=2, size=96, seed=3)
    dicom = root / "chest.dcm"
    shutil.copy(sorted((rsna / "stage_2_train_images").glob("*.dcm"))[0], dicom)
    images = Cache.open(tiny_cache).images
    Image.fromarray(np.asarray(images[0])).save(root / "image.png")
    Image.fromarray(np.asarray(images[3])).save(root / "image.jpg", quality=95)
    return {"dicom": dicom, "png": root / "image.png", "jpeg": root / "image.jpg"}


def write_dicom(path: Path, pixels: np.ndarray, **patient: str) -> Path:
    """An uncompressed 16-bit MONOCHROME2 DICOM written with pydicom, with the patient fields given."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    for key, value in patient.items():
        setattr(ds, key, value)
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def make_dicom():
    """`make_dicom(path, pixels, PatientName=..., ...)` -> path (see write_dicom)."""
    return write_dicom


@pytest.fixture(scope="session")
def make_png():
    """`make_png(uint8 array)` -> PNG bytes."""
    return png_bytes
