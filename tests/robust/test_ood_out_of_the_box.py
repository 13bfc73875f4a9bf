"""A freshly trained run flags a non-chest radiograph in `predict` and on the page, with no `medclf ood` step.

Real data: trained briefly on PneumoniaMNIST (paediatric chest X-rays, 28 px); the extremity radiographs RG3
(NEMA WG04, JPEG 2000 lossy and lossless) must come back flagged, while most chest images of the validation
split must not (the stored threshold accepts 95% of validation).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medclf.config import load_config
from medclf.data.prepare import prepare_medmnist
from medclf.engine.predict import predict_files
from medclf.engine.train import train

pytestmark = pytest.mark.slow  # trains a model or starts a subprocess (make test-fast skips it)

@pytest.fixture(scope="module")
def pmnist_run(shared, scratch, request):
    npz = shared("pneumoniamnist", "pneumoniamnist_trainval.npz")
    rg3 = [shared("dicom-variants", name) for name in ("RG3_J2KI.dcm", "RG3_J2KR.dcm")]
    root = scratch(request, "pmnist-ood")
    cache = prepare_medmnist(npz, root / "cache", progress=False)
    cfg = load_config(None, ["model.input_size=28", "train.epochs=1", "train.max_steps_per_epoch=20",
                             "data.batch_size=32", "eval.n_boot=0", "train.device=cpu"])
    run = train(cfg, cache, root / "run", progress=False)  # no `ood` option anywhere: the default fits it
    chest = root / "chest"
    chest.mkdir()
    images = np.load(cache / "images.npy", mmap_mode="r")[-40:]  # the last rows: validation images
    for i, image in enumerate(images):
        Image.fromarray(np.asarray(image)).save(chest / f"val-{i:02d}.png")
    return run, rg3, sorted(chest.iterdir())


def test_predict_flags_the_extremity_radiographs_and_few_chest_images(pmnist_run):
    run, rg3, chest = pmnist_run
    table = predict_files(run, [*rg3, *chest], progress=False, device="cpu")
    assert (table["error"] == "").all()
    assert table["ood"].iloc[:2].tolist() == [True, True]
    assert table["ood"].iloc[2:].sum() <= 6  # the threshold accepts 95% of validation: ~2 of 40 expected


def test_the_page_api_flags_them_too(pmnist_run):
    from fastapi.testclient import TestClient

    from medclf.serve.app import create_app
    from medclf.serve.predictor import ServeModel

    run, rg3, _ = pmnist_run
    with TestClient(create_app(ServeModel.load(run, "cpu"))) as client:
        assert client.get("/api/model").json()["ood"] is True
        files = [("files", (p.name, p.read_bytes(), "application/dicom")) for p in rg3]
        answer = client.post("/api/predict?heatmap=false&image=false", files=files)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["ood"]["flag"] for r in results] == [True, True]
