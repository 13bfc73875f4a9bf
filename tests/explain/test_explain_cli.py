"""`medclf explain` end to end on the tiny cache: overlays, feature-map grids, box scores, gallery, report."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from medclf.data.cache import Cache
from medclf.data.transforms import make_transform
from medclf.engine.predict import predict_files
from medclf.errors import MedclfError
from medclf.explain.registry import compute_maps, resize_maps
from medclf.explain.scores import energy_in_box
from medclf.report.html import build_report
from medclf.runs import open_run


def _app():
    from medclf.cli.main import app

    return app


def _invoke(*args):
    return CliRunner().invoke(_app(), [str(a) for a in args])


@pytest.fixture(scope="module")
def pngs(tiny_cache, tmp_path_factory):
    """Test-split images 9 (positive, box) and 14 (negative) of the tiny cache written as PNG files."""
    folder = tmp_path_factory.mktemp("pngs")
    images = Cache.open(tiny_cache).images
    for i in (9, 14):
        Image.fromarray(np.asarray(images[i])).save(folder / f"img{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def scored(cnn_run, tiny_cache):
    r = _invoke("explain", cnn_run, "--data", tiny_cache, "--split", "test", "--score", "--methods",
                "gradcam,eigencam", "--n-boot", 50, "--gallery", 1)
    assert r.exit_code == 0, r.output
    return cnn_run, r.output


@pytest.mark.slow  # ~2 s CPU on the loaded 2-core machine: too slow for make test-fast
def test_overlays_are_written_with_the_predicted_probability(cnn_run, pngs, tmp_path):
    r = _invoke("explain", cnn_run, pngs, "--method", "gradcam++", "--out", tmp_path)
    assert r.exit_code == 0, r.output
    assert "2 overlay(s) written" in r.output
    table = pd.read_csv(tmp_path / "explanations.csv")
    assert table["png"].tolist() == [str(tmp_path / "img009_gradcampp.png"), str(tmp_path / "img014_gradcampp.png")]
    expected = predict_files(cnn_run, [pngs], progress=False)["prob"].tolist()  # the probability predict gives
    np.testing.assert_allclose(table["prob"], expected, atol=1e-6)
    picture = np.asarray(Image.open(tmp_path / "img009_gradcampp.png"))
    assert picture.shape == (192, 192, 3)  # a 32 px image drawn at the 192 px minimum
    assert (picture[..., 0] != picture[..., 2]).any()  # the heat colour is blended in somewhere


def test_overlay_keeps_the_grey_radiograph_where_the_map_is_zero():
    from medclf.explain.overlay import heat_overlay

    image = np.full((4, 4), 100, dtype=np.uint8)
    heat = np.zeros((4, 4), dtype=np.float32)
    heat[0, 0] = 1.0
    rgb = heat_overlay(image, heat, alpha=0.5)
    assert (rgb[3, 3] == 100).all()  # no false colour where the map says nothing
    # jet(1.0) = (0.5, 0, 0): half opacity gives 0.5 * 100/255 + 0.5 * 0.5 -> 0.446 * 255 = 114 (red), 50 (g, b)
    assert rgb[0, 0].tolist() == [114, 50, 50]


def test_featuremaps_writes_a_grid_of_strongest_channels_per_stage(cnn_run, pngs, tmp_path):
    r = _invoke("explain", cnn_run, pngs / "img009.png", "--method", "featuremaps", "--out", tmp_path)
    assert r.exit_code == 0, r.output
    grid = np.asarray(Image.open(tmp_path / "img009_featuremaps_grid.png"))
    # 4 stages (layer1..layer4) x 6 channels of 128 px panels with 4 px gaps
    assert grid.shape == (4 * 128 + 3 * 4, 6 * 128 + 5 * 4, 3)
    assert (tmp_path / "img009_featuremaps.png").is_file()


def test_bad_requests_fail_with_one_line_naming_the_problem(cnn_run, pngs, tiny_cache):
    cases = [
        (["--method", "gradcamm"], "unknown explanation method 'gradcamm' (did you mean gradcam"),
        (["--method", "rollout"], "'rollout' needs a Vision Transformer and resnet18 is not one"),
    ]
    for extra, message in cases:
        r = _invoke("explain", cnn_run, pngs, *extra)
        assert isinstance(r.exception, MedclfError) and message in str(r.exception)
    r = _invoke("explain", cnn_run, "--score")
    assert str(r.exception) == "--score needs --data CACHE (a prepared cache whose manifest has boxes)"
    r = _invoke("explain", cnn_run, "--data", tiny_cache, "--score", "--split", "holdout")
    assert str(r.exception) == "--split must be one of train, val, test or all, not 'holdout'"
    r = _invoke("explain", cnn_run, "--data", tiny_cache)
    assert "add --score" in str(r.exception)


@pytest.mark.slow  # the `scored` fixture scores two methods with ROAD over the test split (~30 s CPU)
def test_scores_cover_the_boxed_positives_of_the_split(scored, tiny_cache):
    run, output = scored
    result = json.loads((run / "explain_scores.json").read_text())
    # test split = rows i % 5 == 4; positives i % 3 == 0: rows 9, 24, 39, 54, one 8 x 8 box each in 32 x 32
    assert (result["n_images"], result["n_boxes"], result["cache_size"], result["input_size"]) == (4, 4, 32, 64)
    assert result["chance"]["mean"] == pytest.approx(64 / 1024)
    assert list(result["methods"]) == ["gradcam", "eigencam"]
    for s in result["methods"].values():
        assert s["n"] == 4 and s["pointing_game"]["mean"] in (0.0, 0.25, 0.5, 0.75, 1.0)
        assert 0.0 <= s["energy_in_box"]["mean"] <= 1.0
        lo, hi = s["road"]["ci"]
        assert -1.0 <= lo <= s["road"]["mean"] <= hi <= 1.0
    assert "| gradcam | 4 |" in output and "| gradcam | 4 |" in (run / "explain_scores.md").read_text()
    per_image = pd.read_csv(run / "explain_scores_per_image.csv")
    assert per_image["id"].tolist() == ["img009", "img024", "img039", "img054"] * 2


@pytest.mark.slow  # the `scored` fixture scores two methods with ROAD over the test split (~30 s CPU)
def test_scores_are_computed_on_maps_resized_to_the_cache(scored, tiny_cache):
    run, _ = scored
    per_image = pd.read_csv(run / "explain_scores_per_image.csv")
    cache, loaded = Cache.open(tiny_cache), open_run(run)
    x = make_transform(loaded.contract, train=False)(torch.from_numpy(np.asarray(cache.images[[9]])))
    heat = resize_maps(compute_maps(loaded.model, x, "eigencam", 1), 32).numpy()[0]  # 64 px map -> 32 px cache
    row = per_image[(per_image["method"] == "eigencam") & (per_image["id"] == "img009")].iloc[0]
    assert row["energy_in_box"] == pytest.approx(energy_in_box(heat, cache.boxes(9)), abs=1e-6)


@pytest.mark.slow  # the `scored` fixture scores two methods with ROAD over the test split (~30 s CPU)
def test_gallery_and_report_section(scored):
    run, _ = scored
    gallery = json.loads((run / "explain_scores.json").read_text())["gallery"]
    assert gallery and set(gallery) <= {"tp", "fp", "fn", "tn"}
    for info in gallery.values():
        picture = np.asarray(Image.open(run / "explain" / info["png"]))
        assert picture.shape == (192, 3 * 192 + 2 * 4, 3)  # one image: radiograph + 2 methods
        assert len(info["images"]) == 1
    html = build_report(run).read_text()
    section = html.split('<section id="explanations">')[1].split("</section>")[0]
    assert "<td>gradcam</td>" in section and "<td>eigencam</td>" in section
    assert section.count("data:image/png;base64,") == len(gallery)


@pytest.mark.slow  # scores every split twice (~4 s CPU)
def test_every_split_can_be_scored(cnn_run, tiny_cache, tmp_path):
    r = _invoke("explain", cnn_run, "--data", tiny_cache, "--split", "all", "--score", "--methods", "featuremaps",
                "--no-road", "--gallery", 0, "--n-boot", 20, "--out", tmp_path)
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "explain_scores.json").read_text())
    assert result["n_images"] == 20 and result["methods"]["featuremaps"]["road"] is None  # 60 images, 1/3 positive
    assert result["gallery"] == {} and not (tmp_path / "explain").exists()
    r = _invoke("explain", cnn_run, "--data", tiny_cache, "--split", "all", "--score", "--methods", "featuremaps",
                "--no-road", "--gallery", 0, "--n-boot", 20, "--out", tmp_path, "--max-images", 3)
    assert json.loads((tmp_path / "explain_scores.json").read_text())["n_images"] == 3


def test_report_has_no_explanations_section_before_scoring(run_factory, model_factory, tmp_path):
    from medclf.report.section_explain import section_explain

    write_run, _ = run_factory
    run = write_run(tmp_path / "run", model_factory("resnet18", 64))
    assert section_explain(run) is None
    assert 'id="explanations"' not in build_report(run).read_text()


@pytest.mark.slow
def test_an_ensemble_run_is_explained_through_its_members(run_factory, model_factory, pngs, tmp_path):
    _, write_ensemble_run = run_factory
    run = write_ensemble_run(tmp_path / "ens", [model_factory("resnet18", 64, seed=s) for s in (1, 2)])
    r = _invoke("explain", run, pngs / "img009.png", "--method", "gradcam")
    assert r.exit_code == 0, r.output
    assert np.asarray(Image.open(run / "explain" / "img009_gradcam.png")).shape == (192, 192, 3)


@pytest.mark.slow  # builds and explains a ViT (~6 s CPU)
def test_a_vit_run_is_explained_with_rollout(run_factory, vit, pngs, tmp_path):
    write_run, _ = run_factory
    run = write_run(tmp_path / "vit", vit)
    r = _invoke("explain", run, pngs / "img009.png", "--method", "rollout", "--out", tmp_path / "maps")
    assert r.exit_code == 0, r.output
    assert np.asarray(Image.open(tmp_path / "maps" / "img009_rollout.png")).shape == (192, 192, 3)


def _caption_rows(picture: np.ndarray) -> int:
    """Height of the black caption box in the top-left corner (the radiograph below is grey noise, never black)."""
    return int(np.argmax((picture[:, 0] != 0).any(axis=1)))


@pytest.mark.slow  # explains every test image (~5 s CPU)
def test_a_flat_map_is_said_on_the_picture_and_in_the_table(cnn_run, model_factory, run_factory, pngs, tmp_path):
    write_run, _ = run_factory
    flat_run = write_run(tmp_path / "flat-run", model_factory("resnet18", 32))  # layer4 is 1 x 1: Grad-CAM is constant
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a dicom")
    pictures = {}
    for name, run in (("flat", flat_run), ("peaked", cnn_run)):
        r = _invoke("explain", run, pngs / "img009.png", junk, "--method", "gradcam++", "--out", tmp_path / name)
        assert r.exit_code == 0, r.output
        assert [line for line in r.stderr.splitlines() if "junk" in line] == [
            f"skipped {junk}: not a DICOM file (no DICM preamble)"]  # the path once
        notes = [line for line in r.stderr.splitlines() if line.startswith("note:")]
        assert notes == ([
            "note: 1 of 1 maps are flat (no region stands out): the model's last feature map is too coarse at a "
            "small input size (a ResNet at 64 px: 2 x 2 cells); train at >= 128 px when localisation matters "
            "(docs/explain.md)"] if name == "flat" else [])  # said on the terminal, not only in the CSV
        table = pd.read_csv(tmp_path / name / "explanations.csv", keep_default_na=False)
        assert table.columns.tolist() == ["path", "method", "prob", "flat", "png", "error"]
        flat = table.set_index("path")["flat"].to_dict()
        assert flat == {str(junk): "", str(pngs / "img009.png"): str(name == "flat")}  # unread: neither
        pictures[name] = np.asarray(Image.open(tmp_path / name / "img009_gradcampp.png"))
    # the flat overlay says so on a second caption line under "pneumonia p=..." (the font is 192 // 16 = 12 px)
    assert _caption_rows(pictures["peaked"]) > 12 and _caption_rows(pictures["flat"]) >= _caption_rows(
        pictures["peaked"]) + 12


def test_multilabel_scores_take_the_images_holding_the_explained_finding(tmp_path, run_factory):
    """Bit-mask labels: `explain --score` scores the images that hold the explained finding (mask bit 0 set, with
    other findings or not), never those whose mask equals the finding's index (0 = No Finding) (issue 19, bug c)."""
    from medclf.data.cache import write_cache
    from medclf.explain.scoring import score_run
    from medclf.models import create_model

    write_run = run_factory[0]
    images = np.random.default_rng(0).integers(40, 90, size=(30, 32, 32)).astype(np.uint8)
    boxed = np.arange(30) % 3 == 0
    images[boxed, 8:16, 8:16] = 220
    boxes = [[[8, 8, 8, 8]] if b else [] for b in boxed]
    # boxed images hold finding 0 ("opacity"), every other one of them also finding 2; the rest hold none or 1
    masks = np.where(boxed, 1 + 4 * (np.arange(30) % 2), 2 * (np.arange(30) % 2))
    manifest = pd.DataFrame({"id": [f"img{i:03d}" for i in range(30)], "patient_id": [f"p{i:03d}" for i in range(30)],
                             "label": masks, "split": "test", "boxes": [json.dumps(b) for b in boxes]})
    names = ["opacity", "nodule", "effusion"]
    cache = write_cache(tmp_path / "cache", images, manifest,
                        {"source": "synthetic", "size": 32, "label_names": names, "positive_index": 0,
                         "task": "multilabel"})
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=3, input_size=64, label_names=names, positive_index=0,
                         task="multilabel").eval()
    run = write_run(tmp_path / "run", model)
    result = score_run(run, cache, split="test", methods="gradcam", faithfulness=False, gallery=0, n_boot=10,
                       device="cpu", progress=False)
    per_image = pd.read_csv(run / "explain_scores_per_image.csv")
    expected = [f"img{i:03d}" for i in np.flatnonzero(masks & 1)]
    assert len(expected) == 10 and sorted(per_image["id"]) == expected and result["n_images"] == 10
