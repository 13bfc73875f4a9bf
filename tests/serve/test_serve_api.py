"""The JSON API through FastAPI's TestClient: answers, refusals (400/413/415), patient data, concurrency."""

from __future__ import annotations

import base64
import io
import json
import logging
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from medclf.data.imageio import load_image
from medclf.engine.predict import predict_files
from medclf.errors import MedclfError
from medclf.models.checkpoint import read_checkpoint
from medclf.serve.app import create_app
from medclf.serve.predictor import SAFE_DICOM_FIELDS, ServeModel
from medclf.serve.server import check_options

MB = 2**20
SECRETS = ("Doe^Jane", "Doe", "PID-7731-SECRET", "19610203")


@pytest.fixture(scope="module")
def upload_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("uploads")


@pytest.fixture(scope="module")
def client(predictor, upload_root):
    app = create_app(predictor, max_upload_mb=1, max_files=4, upload_dir=upload_root)
    with TestClient(app) as c:
        yield c


def post(client: TestClient, *files: tuple[str, bytes], **params):
    parts = [("files", (name, data, "application/octet-stream")) for name, data in files]
    return client.post("/api/predict", files=parts, params=params)


def read_file(path: Path) -> tuple[str, bytes]:
    return path.name, path.read_bytes()


def png_array(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


@pytest.mark.slow
def test_health_and_model_describe_the_run(client, serve_run):
    assert client.get("/api/health").json() == {"status": "ok", "model": "run"}
    response = client.get("/api/model")
    m = response.json()
    assert m["labels"] == ["normal", "pneumonia"] and m["positive_label"] == "pneumonia"
    assert (m["input_size"], m["image_size"], m["kind"], m["members"]) == (32, 32, "single", 1)
    assert m["threshold"] == read_checkpoint(serve_run / "best.pt")["contract"]["threshold"]
    assert m["ood"] is True and m["max_upload_mb"] == 1 and m["max_files"] == 4
    # tiny cache: label = (i % 3 == 0), split by i % 5 (0-2 train, 3 val, 4 test) over 60 images
    assert m["training_data"]["split_counts"] == {"train": {"normal": 24, "pneumonia": 12},
                                                  "val": {"normal": 8, "pneumonia": 4},
                                                  "test": {"normal": 8, "pneumonia": 4}}
    assert m["training_data"]["n"] == 60
    assert "cache" not in m["training_data"]  # a server path, not for clients
    assert "default-src 'self'" in response.headers["content-security-policy"]
    page = client.get("/")
    assert page.status_code == 200 and '<script src="/static/app.js"' in page.text
    assert "//" not in page.text.replace("http://www.w3.org", "")  # no CDN or other host referenced
    assert client.get("/static/app.js").status_code == 200


@pytest.mark.slow
def test_dicom_answer_matches_the_predict_command(client, serve_run, sample_files, upload_root):
    response = post(client, read_file(sample_files["dicom"]))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "run" and len(body["results"]) == 1
    r = body["results"][0]
    expected = predict_files(serve_run, [sample_files["dicom"]], device="cpu", progress=False).iloc[0]
    assert r["probability"] == pytest.approx(expected["prob"], abs=1e-6)
    assert r["label"] == expected["predicted"]
    assert r["threshold"] == body["threshold"]
    assert r["positive"] == (r["probability"] >= r["threshold"]) == (r["label"] == "pneumonia")
    assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert r["probabilities"]["pneumonia"] == r["probability"]
    assert (r["filename"], r["type"], r["model"]) == ("chest.dcm", "dicom", "resnet18")
    assert set(r["dicom"]) == set(SAFE_DICOM_FIELDS)
    assert (r["dicom"]["modality"], r["dicom"]["photometric"], r["dicom"]["bits_stored"]) == ("CR", "MONOCHROME2", 8)
    # display picture: the 96 px file at its own size, decoded by the same reader as the cache
    assert r["image_size"] == 96
    assert np.array_equal(png_array(r["image"]), load_image(sample_files["dicom"], 96))
    heat = png_array(r["heatmap"])
    assert heat.shape == (96, 96, 4) and r["heatmap_reason"] is None
    # resnet18 at 32 px ends in a 1 x 1 feature map: Grad-CAM is constant, i.e. flat and fully transparent
    assert r["heatmap_flat"] is True and heat[..., 3].max() == 0
    # the detector fitted when training ended scores every upload
    assert r["ood_reason"] is None and set(r["ood"]) == {"score", "flag"}
    assert list(upload_root.iterdir()) == []  # the request's temporary folder is gone


@pytest.mark.slow
def test_several_files_of_each_type_in_one_request(client, serve_run, sample_files):
    paths = [sample_files["dicom"], sample_files["png"], sample_files["jpeg"]]
    response = post(client, *map(read_file, paths), heatmap="false")
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["type"] for r in results] == ["dicom", "png", "jpeg"]
    assert [r["filename"] for r in results] == ["chest.dcm", "image.png", "image.jpg"]
    expected = predict_files(serve_run, paths, device="cpu", progress=False)
    assert [r["probability"] for r in results] == pytest.approx(list(expected["prob"]), abs=1e-6)
    assert results[1]["image_size"] == 32 and results[1]["dicom"] is None
    assert results[1]["heatmap"] is None and results[1]["heatmap_reason"] == "not requested"


@pytest.mark.slow
def test_client_file_names_never_become_paths(client, sample_files, upload_root):
    data = sample_files["dicom"].read_bytes()
    response = post(client, ("../../../escape.dcm", data), ("C:\\Users\\x\\win.dcm", data), heatmap="false")
    assert response.status_code == 200, response.text
    assert [r["filename"] for r in response.json()["results"]] == ["escape.dcm", "win.dcm"]
    assert not list(upload_root.parent.parent.rglob("escape.dcm"))  # nowhere in the test temp tree
    assert list(upload_root.iterdir()) == []


@pytest.mark.slow
def test_model_says_why_its_threshold_is_the_default(client):
    # the tiny cache's val split has 4 positives and 8 negatives, below eval.threshold_min_class (10)
    m = client.get("/api/model").json()
    reason = "default 0.5: validation has 4 positives and 8 negatives (< 10)"
    assert (m["threshold"], m["threshold_source"], m["threshold_reason"]) == (0.5, "default", reason)
    assert m["warnings"][0] == f"the operating threshold is not fitted to data ({reason})"
    assert "validation: only 4 positives (< 10): sensitivity, precision and F1" in m["warnings"][1]
    assert 'id="model-warning"' in client.get("/").text  # where the page shows them


@pytest.mark.slow
def test_ensemble_run_of_identical_members_answers_like_one_member(ensemble_run, client, sample_files):
    single = post(client, read_file(sample_files["dicom"])).json()["results"][0]
    with TestClient(create_app(ServeModel.load(ensemble_run, "cpu"))) as ens:
        m = ens.get("/api/model").json()
        assert (m["kind"], m["members"], m["name"]) == ("ensemble", 2, "ens")
        # an ensemble.json written before the reasons existed: none, rather than the first member's
        assert (m["threshold_source"], m["threshold_reason"], m["warnings"]) == (None, None, [])
        assert m["training_data"]["n"] == 60
        r = post(ens, read_file(sample_files["dicom"])).json()["results"][0]
    assert r["probability"] == pytest.approx(single["probability"], abs=1e-6)
    assert r["label"] == single["label"] and r["threshold"] == single["threshold"]
    assert r["model"].startswith("ensemble[mean]") and r["heatmap"] is not None


@pytest.mark.slow
def test_ood_score_and_flag_when_the_checkpoint_has_a_detector(serve_run, tmp_path, sample_files):
    from medclf.robust.ood_run import ood_run
    from medclf.runs import open_run

    run_dir = tmp_path / "run-ood"
    shutil.copytree(serve_run, run_dir)
    ood_run(run_dir, "noise", device="cpu", progress=False)  # fits and stores contract.ood in best.pt
    files = [sample_files["dicom"], sample_files["png"]]
    with TestClient(create_app(ServeModel.load(run_dir, "cpu"))) as c:
        assert c.get("/api/model").json()["ood"] is True
        results = post(c, *map(read_file, files), heatmap="false").json()["results"]
    run = open_run(run_dir, "cpu")
    predictor = run.predictor()
    scores, flags = predictor.ood(predictor.predict_arrays(np.stack([load_image(f, 32, norm=run.norm) for f in files])))
    for r, score, flag in zip(results, scores, flags):
        assert r["ood_reason"] is None
        assert r["ood"] == {"score": pytest.approx(float(score), rel=1e-5, abs=1e-6), "flag": bool(flag)}
        assert r["ood"]["flag"] == (r["ood"]["score"] > run.contract.ood["threshold"])


@pytest.mark.slow
def test_malformed_files_get_400_and_the_server_keeps_serving(client, sample_files, make_dicom, make_png,
                                                              tmp_path, upload_root):
    good = sample_files["dicom"].read_bytes()
    no_pixels = make_dicom(tmp_path / "np.dcm", np.zeros((8, 8)))
    import pydicom

    ds = pydicom.dcmread(no_pixels)
    del ds.PixelData
    ds.save_as(no_pixels)
    cases = {
        "cut.dcm": (good[: len(good) * 2 // 3], "truncated"),
        "junk.dcm": (b"\0" * 128 + b"DICM" + bytes(range(256)) * 4, "no pixel data"),
        "bad.png": (make_png(np.zeros((8, 8), np.uint8))[:20] + b"garbage", "cannot decode"),
        "bad.jpg": (b"\xff\xd8\xff\xe0" + b"\x00" * 100, "not a readable image"),
        "nopixels.dcm": (no_pixels.read_bytes(), "no pixel data"),
        "empty.png": (b"", "empty file"),
    }
    for name, (data, reason) in cases.items():
        response = post(client, (name, data))
        assert response.status_code == 400, (name, response.text)
        detail = response.json()["detail"]
        assert detail.startswith(f"{name}: ") and reason in detail, detail
        assert "upload-" not in detail and "medclf-serve-" not in detail  # no server paths
        assert client.get("/api/health").status_code == 200
    mixed = post(client, ("ok.dcm", good), ("cut.dcm", good[:400]))  # 400 bytes: header only
    assert mixed.status_code == 400 and mixed.json()["detail"].startswith("cut.dcm: ")
    assert post(client, ("ok.dcm", good)).status_code == 200
    assert list(upload_root.iterdir()) == []


@pytest.mark.slow
def test_wrong_types_get_415(client, make_dicom, tmp_path):
    raw_dataset = make_dicom(tmp_path / "x.dcm", np.zeros((8, 8))).read_bytes()[132:]  # valid, but no preamble
    for name, data in {"notes.txt": b"hello, not an image", "anim.gif": b"GIF89a" + b"\0" * 200,
                       "headless.dcm": raw_dataset}.items():
        response = post(client, (name, data))
        assert response.status_code == 415, (name, response.text)
        assert response.json()["detail"].startswith(f"{name}: unsupported file type")
    as_json = client.post("/api/predict", json={"image": "x"})
    assert as_json.status_code == 415 and "multipart/form-data" in as_json.json()["detail"]
    no_files = client.post("/api/predict", headers={"content-type": "multipart/form-data; boundary=b"},
                           content=b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\nhi\r\n--b--\r\n')
    assert no_files.status_code == 400 and "no file" in no_files.json()["detail"]


@pytest.mark.slow
def test_oversize_gets_413_and_too_many_files_400(client, sample_files, upload_root):
    big = b"\x89PNG\r\n\x1a\n" + b"\0" * (MB + 10)
    response = post(client, ("big.png", big))
    assert response.status_code == 413 and "1 MiB" in response.json()["detail"]
    # several files together over the cap: the limit is per request
    half = b"\x89PNG\r\n\x1a\n" + b"\0" * (MB // 2 + 10)
    assert post(client, ("a.png", half), ("b.png", half)).status_code == 413
    five = [("f.dcm", sample_files["dicom"].read_bytes())] * 5
    response = post(client, *five)
    assert response.status_code == 400 and "at most 4" in response.json()["detail"]
    assert list(upload_root.iterdir()) == []


@pytest.mark.slow
def test_patient_fields_never_returned_nor_logged(predictor, make_dicom, tmp_path, caplog, capsys):
    pixels = np.add.outer(np.arange(48), np.arange(64)) * 40
    path = make_dicom(tmp_path / "p.dcm", pixels, PatientName="Doe^Jane", PatientID="PID-7731-SECRET",
                      PatientBirthDate="19610203", PatientSex="F")
    import pydicom

    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(tmp_path / "broken.dcm")
    caplog.set_level(logging.DEBUG)
    with TestClient(create_app(predictor)) as c:
        ok = post(c, ("scan.dcm", path.read_bytes()))
        bad = post(c, ("scan2.dcm", (tmp_path / "broken.dcm").read_bytes()))
    assert ok.status_code == 200 and bad.status_code == 400
    assert ok.json()["results"][0]["dicom"] == {"modality": "DX", "view": "", "photometric": "MONOCHROME2",
                                                "bits_stored": 12}
    out = capsys.readouterr()
    for text in (ok.text, bad.text, caplog.text, out.out, out.err):
        for secret in SECRETS:
            assert secret not in text
    assert "predict: 1 file(s)" in caplog.text  # the service does log, just not patient data


@pytest.mark.slow
def test_concurrent_requests_from_threads_agree(client, sample_files):
    data = read_file(sample_files["dicom"])
    expected = post(client, data).json()["results"][0]["probability"]
    answers, start = [], threading.Barrier(8)

    def worker() -> None:
        start.wait()
        for _ in range(3):
            r = post(client, data)
            answers.append((r.status_code, r.json()["results"][0]["probability"] if r.status_code == 200 else None))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(answers) == 24
    assert all(status == 200 for status, _ in answers)
    assert all(p == pytest.approx(expected, abs=1e-6) for _, p in answers)


class _Payload:
    """Unpickling this would create `marker` (what a malicious checkpoint could do instead)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    run = tmp_path / "evil"
    run.mkdir()
    marker = tmp_path / "pwned"
    torch.save({"format": "medclf-checkpoint", "payload": _Payload(marker)}, run / "best.pt")
    with pytest.raises(MedclfError) as refused:
        ServeModel.load(run, "cpu")
    assert not marker.exists()
    # medclf's own line naming what was refused, never torch's advice to load it with weights_only=False
    message = str(refused.value)  # the refused global: builtins.getattr, as pickle stores a method reference
    assert message.startswith(f"{run / 'best.pt'}: refused: it holds pickled code or objects (")
    assert message.endswith("), not only tensors and plain values, so medclf does not load it (a medclf checkpoint "
                            "holds nothing else)")
    assert "weights_only" not in message and "\n" not in message


def test_cli_serve_errors_are_one_line(tmp_path, monkeypatch, capsys):
    from medclf.cli.main import main

    monkeypatch.setattr(sys, "argv", ["medclf", "serve", str(tmp_path / "nope"), "--port", "0"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {tmp_path / 'nope'}: not a run directory"
    with pytest.raises(MedclfError, match="--max-upload-mb 0: must be positive"):
        check_options("127.0.0.1", 8000, 0)
    with pytest.raises(MedclfError, match="--port 70000"):
        check_options("127.0.0.1", 70000, 1)
    with pytest.raises(MedclfError, match="--max-concurrent 0: must be at least 1"):
        check_options("127.0.0.1", 8000, 1, max_concurrent=0)
    with pytest.raises(MedclfError, match="--upload-timeout 0: must be positive"):
        check_options("127.0.0.1", 8000, 1, upload_timeout_s=0)
    with pytest.raises(MedclfError, match="--max-mpx -1: must be positive"):
        check_options("127.0.0.1", 8000, 1, max_mpx=-1)


@pytest.mark.slow
def test_image_false_leaves_the_picture_out(client, sample_files):
    full = post(client, read_file(sample_files["dicom"])).json()["results"][0]
    response = post(client, read_file(sample_files["dicom"]), image="false")
    assert response.status_code == 200, response.text
    r = response.json()["results"][0]
    assert r["image"] is None and r["probability"] == full["probability"]
    # the heatmap comes at the size the model saw (the run's 32 px cache size), not the 96 px display size
    assert r["image_size"] == 32 and png_array(r["heatmap"]).shape == (32, 32, 4)
    assert len(response.content) < len(json.dumps(full)) - len(full["image"]) + 100


@pytest.mark.slow
def test_refusals_never_quote_values_read_from_the_file(client, make_dicom, tmp_path):
    """A header value can hold any text (here a patient name where a number belongs): the answer names the
    problem without it."""
    import pydicom
    from pydicom.dataelem import DataElement

    path = make_dicom(tmp_path / "slope.dcm", np.add.outer(np.arange(48), np.arange(64)) * 40)
    ds = pydicom.dcmread(path)
    ds[0x00281053] = DataElement(0x00281053, "LO", "Doe^Jane")  # RescaleSlope, not a number
    ds.save_as(path)
    with pytest.raises(MedclfError, match="Doe"):  # the reader tells a local user the value ...
        load_image(path, 32)
    response = post(client, ("slope.dcm", path.read_bytes()))
    assert response.status_code == 400
    assert response.json() == {"detail": "slope.dcm: invalid RescaleSlope"}  # ... the service does not


@pytest.mark.slow
def test_openapi_schema_declares_the_upload_and_its_refusals(client):
    op = client.get("/api/openapi.json").json()["paths"]["/api/predict"]["post"]
    body = op["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert op["requestBody"]["required"] is True and body["required"] == ["files"]
    assert body["properties"]["files"]["items"] == {"type": "string", "format": "binary"}
    # the file count the server accepts: none is a 400 (so the schema must not allow an empty array)
    assert (body["properties"]["files"]["minItems"], body["properties"]["files"]["maxItems"]) == (1, 4)  # max_files
    empty = client.post("/api/predict", content=b"--B--\r\n",
                        headers={"content-type": "multipart/form-data; boundary=B"})
    assert empty.status_code == 400
    assert {"200", "400", "408", "413", "415"} <= set(op["responses"])
    for status in ("400", "408", "413", "415"):
        schema = op["responses"][status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorAnswer"}
    assert [p["name"] for p in op["parameters"]] == ["heatmap", "image"]


@pytest.mark.slow
def test_predict_cli_names_an_unreadable_file_once(serve_run, sample_files, tmp_path):
    from typer.testing import CliRunner

    from medclf.cli.main import app

    junk = tmp_path / "new_studies" / "junk.dcm"
    junk.parent.mkdir()
    junk.write_bytes(b"not a dicom at all")
    result = CliRunner().invoke(app, ["predict", str(serve_run), str(sample_files["png"]), str(junk)])
    assert result.exit_code == 0, result.output
    naming = [line for line in result.stderr.splitlines() if "junk.dcm" in line]  # the rest: the progress bar
    assert naming == [f"skipped {junk}: not a DICOM file (no DICM preamble)"]
