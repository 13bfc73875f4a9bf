"""`medclf explain --target` on a tiny 3-class run: the default is the predicted class, a name picks a class,
an unknown name is a one-line error; `resolve_targets` serves binary and multilabel runs too."""

import os
import subprocess
import sys

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
from medclf.explain.run import explain_targets
from medclf.explain.targets import resolve_targets
from medclf.runs import open_run

NAMES = ["Normal", "No Lung Opacity / Not Normal", "Lung Opacity"]


def _invoke(*args):
    from medclf.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def pngs(tiny_multiclass_cache, tmp_path_factory):
    """Test images 4, 9, 14 (classes 1, 0, 2) of the tiny 3-class cache as PNG files."""
    folder = tmp_path_factory.mktemp("pngs3")
    images = Cache.open(tiny_multiclass_cache).images
    for i in (4, 9, 14):
        Image.fromarray(np.asarray(images[i])).save(folder / f"im{i:03d}.png")
    return folder


def test_resolve_targets_per_task():
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]])
    assert resolve_targets(probs, NAMES, "multiclass", 2).tolist() == [1, 0]  # the predicted class
    assert resolve_targets(probs, NAMES, "multilabel", 2).tolist() == [1, 0]  # the most probable label
    assert resolve_targets(probs, NAMES, "multiclass", 2, "Normal").tolist() == [0, 0]
    assert resolve_targets(np.array([[0.9, 0.1]]), ["normal", "pneumonia"], "binary", 1).tolist() == [1]
    with pytest.raises(MedclfError, match=r"--target 'Nodule': no such class; valid: Normal, No Lung"):
        resolve_targets(probs, NAMES, "multilabel", 0, "Nodule")


@pytest.mark.slow
def test_default_target_is_the_predicted_class_with_its_map(tiny_multiclass_run, pngs, tmp_path):
    r = _invoke("explain", tiny_multiclass_run, pngs, "--out", tmp_path)
    assert r.exit_code == 0, r.output
    table = pd.read_csv(tmp_path / "explanations.csv")
    predicted = predict_files(tiny_multiclass_run, [pngs], progress=False)
    probs = predicted[[f"prob_{n}" for n in NAMES]].to_numpy()
    assert table["target"].tolist() == [NAMES[k] for k in probs.argmax(axis=1)]
    np.testing.assert_allclose(table["prob"], probs.max(axis=1), atol=1e-6)
    # each map is the CAM of that image's predicted class, computed alone
    run = open_run(tiny_multiclass_run, torch.device("cpu"))
    images = np.stack([np.asarray(Image.open(pngs / f"im{i:03d}.png")) for i in (4, 9, 14)])
    maps, _, targets = explain_targets(run, images, "gradcam", "cpu")
    x = make_transform(run.contract, train=False)(torch.from_numpy(images))
    for i, k in enumerate(targets):
        alone = resize_maps(compute_maps(run.model, x[i:i + 1], "gradcam", int(k)), 32).clamp_(0, 1).numpy()[0]
        np.testing.assert_allclose(maps[i], alone, atol=1e-5)
    assert maps.shape == (3, 32, 32) and maps.max() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
def test_target_by_name_draws_that_class(tiny_multiclass_run, pngs, tmp_path):
    r = _invoke("explain", tiny_multiclass_run, pngs, "--target", "Lung Opacity", "--out", tmp_path)
    assert r.exit_code == 0, r.output
    table = pd.read_csv(tmp_path / "explanations.csv")
    assert set(table["target"]) == {"Lung Opacity"}
    expected = predict_files(tiny_multiclass_run, [pngs], progress=False)["prob_Lung Opacity"]
    np.testing.assert_allclose(table["prob"], expected, atol=1e-6)


@pytest.mark.slow
def test_an_unknown_target_is_a_one_line_error_listing_the_classes(tiny_multiclass_run, pngs, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, ["src", os.environ.get("PYTHONPATH")]))}
    r = subprocess.run([sys.executable, "-m", "medclf", "explain", str(tiny_multiclass_run), str(pngs),
                        "--target", "Nodule", "--out", str(tmp_path)], capture_output=True, text=True, env=env)
    assert r.returncode == 2
    assert r.stderr == ("error: --target 'Nodule': no such class; valid: Normal, No Lung Opacity / Not Normal, "
                        "Lung Opacity\n")
    assert not (tmp_path / "explanations.csv").exists()


def test_the_web_viewer_draws_the_class_explain_draws(run_factory, model_factory, tmp_path):
    """A K-class run: the service's heat map is the map of each image's predicted class, as `explain` draws it,
    not of the positive class (issue 19, bug b)."""
    from medclf.explain.registry import compute_class_maps
    from medclf.models import create_model
    from medclf.serve.predictor import ServeModel

    torch.manual_seed(3)
    model = create_model("resnet18", num_classes=3, input_size=64, label_names=NAMES, positive_index=2).eval()
    run_dir = run_factory[0](tmp_path / "run", model)
    images = np.random.default_rng(0).integers(0, 255, size=(6, 32, 32)).astype(np.uint8)
    served = ServeModel.load(run_dir, "cpu")
    prediction, (maps, reason) = served._run_model(images, heatmap=True)
    run = open_run(run_dir, torch.device("cpu"))
    _, _, targets = explain_targets(run, images, "gradcam", "cpu")
    assert reason is None and targets.tolist() == prediction.probs.argmax(axis=1).tolist()
    assert (targets != 2).any()  # some image's predicted class is not the positive one: the check means something
    x = make_transform(run.contract, train=False)(torch.from_numpy(images))
    np.testing.assert_allclose(maps, compute_class_maps(run.model, x, "gradcam", targets), atol=1e-5)
