"""One path to probabilities: ROAD and the OOD scores read the Predictor's own probabilities (its test-time flip,
ensemble combination and the task's activation), and the explanation and service code feed the bare model the
graph's own preprocessing. Random-weight models, no training: what is compared is the path, not the accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medclf.evaluation.ood import score_msp
from medclf.explain.scores import road_scores
from medclf.models import create_model
from medclf.runs import Predictor, Probabilities, model_input
from medclf.runs.graph import InferenceModule
from medclf.runs.ood import model_outputs

FINDINGS = ["effusion", "nodule", "opacity"]


def _model(task: str):
    torch.manual_seed(0)
    names = FINDINGS if task == "multilabel" else ["normal", "pneumonia"]
    return create_model("resnet18", num_classes=len(names), input_size=32, label_names=names, positive_index=1,
                        task=None if task == "binary" else task).eval()


def _images(n: int = 3, size: int = 32) -> np.ndarray:
    """Noise with a bright block left of centre, so the mirror image really is another input."""
    rng = np.random.default_rng(1)
    images = rng.integers(30, 90, size=(n, size, size)).astype(np.uint8)
    images[:, 8:20, 2:12] = 220
    return images


def _predictor(task: str, tta_flip: bool = True) -> Predictor:
    model = _model(task)
    return Predictor(model, model.contract, tta_flip=tta_flip)


class _MeanOfImage(torch.nn.Module):
    """Class probabilities [mean pixel, 1 - mean pixel] of a unit-range image (already probabilities)."""

    def forward(self, x_unit: torch.Tensor) -> torch.Tensor:
        m = x_unit.mean(dim=(1, 2, 3))
        return torch.stack([m, 1 - m], dim=1)


def test_road_reads_the_probabilities_it_is_given_by_hand():
    # left half white, right half black; the map points at the left half. MoRF at 50 % removes the left half,
    # which the imputation refills from its black neighbours (mean 0); LeRF removes the right half, refilled
    # white (mean 1). ROAD = (1 - 0) / 2 = 0.5, up to the imputation noise (0.01 per pixel, averaged).
    # A softmax applied on top (the old path) would give (0.731 - 0.269) / 2 = 0.231.
    x = torch.zeros(1, 1, 16, 16)
    x[..., :8] = 1.0
    heat = np.zeros((1, 16, 16), dtype=np.float32)
    heat[..., :8] = 1.0
    torch.manual_seed(0)
    assert road_scores(_MeanOfImage(), x, heat, class_index=0, percentiles=(50,)) == pytest.approx([0.5], abs=0.01)


def test_road_perturbs_the_predictors_own_probabilities():
    predictor = _predictor("multilabel")
    images = _images()
    expected = predictor.predict_arrays(images).probs
    with torch.no_grad():
        got = Probabilities(predictor)(predictor.unit(torch.from_numpy(images))).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    unflipped = _predictor("multilabel", tta_flip=False).predict_arrays(images).probs
    assert np.abs(expected - unflipped).max() > 1e-4  # the flip matters for these images: the check means something
    assert np.abs(got.sum(axis=1) - 1).max() > 1e-3  # a sigmoid per finding, not a softmax over the findings


def test_the_max_probability_ood_score_is_the_predictors_max_probability():
    predictor = _predictor("multilabel")
    images = _images()
    out = model_outputs(predictor, [torch.from_numpy(images)])  # one batch, as predict_arrays runs it
    probs = predictor.predict_arrays(images).probs
    np.testing.assert_array_equal(score_msp(out), -probs.max(axis=1).astype(np.float64))
    # the energy reads the model's logits averaged over the same two views; Mahalanobis the unflipped features
    x = model_input(predictor.contract, torch.from_numpy(images))
    with torch.no_grad():
        logits = (predictor.module.model(x) + predictor.module.model(x.flip(-1))) / 2
    np.testing.assert_allclose(out.logits, logits.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(out.features, predictor.embeddings(torch.from_numpy(images))[0], rtol=0, atol=1e-6)


def test_the_bare_models_input_is_the_graphs_unflipped_view():
    model = _model("binary")
    images = torch.from_numpy(_images(2, 48))  # a 48 px cache for a 32 px model: resized, then normalised
    graph = InferenceModule(model, model.contract)
    x = model_input(model.contract, images)
    assert x.shape == (2, 3, 32, 32)
    torch.testing.assert_close(x, graph.transform.normalise(graph.transform.unit(images)), rtol=0, atol=0)
    mean, std = model.contract.mean[0], model.contract.std[0]
    corner = images[0, :3, :3].float().mean() / 255  # 48 -> 32 px antialiased: a corner pixel mixes 1.5 x 1.5
    assert abs(float(x[0, 0, 0, 0]) * std + mean - float(corner)) < 0.1
