"""OOD scores and metrics on numbers worked out by hand and on synthetic Gaussian blobs."""

import numpy as np
import pytest

from medclf.errors import MedclfError
from medclf.evaluation.ood import (
    Outputs,
    detection_metrics,
    fit_mahalanobis,
    get_score,
    mahalanobis_scores,
    score_energy,
    score_msp,
)


def test_detection_metrics_by_hand():
    # OOD 2.5 beats in-dist 0,1,2 (3 of 4 pairs), OOD 4 beats all 4: AUROC 7/8. Accepting 95% of 4 in-dist
    # images means accepting all of them (threshold 3), which accepts the OOD image at 2.5: FPR 1/2.
    m = detection_metrics(np.array([0.0, 1.0, 2.0, 3.0]), np.array([2.5, 4.0]))
    assert m == {"auroc": 0.875, "fpr95": 0.5, "n_in": 4, "n_out": 2}


def test_mahalanobis_by_hand_and_nearest_class():
    means = np.array([[0.0, 0.0], [10.0, 0.0]])
    precision = np.diag([1.0, 0.25])
    # (1,2): to class 0 -> 1*1 + 0.25*4 = 2; to class 1 -> 81 + 1 = 82; the minimum is 2
    assert mahalanobis_scores(np.array([[1.0, 2.0], [9.0, 0.0]]), means, precision) == pytest.approx([2.0, 1.0])


def test_mahalanobis_separates_two_gaussian_blobs():
    rng = np.random.default_rng(0)
    d = 16
    mix = rng.normal(size=(d, d)) / np.sqrt(d)  # correlated features, as a network's are
    def blob(center, n):
        return (rng.normal(size=(n, d)) @ mix) + center
    c0, c1 = np.zeros(d), np.r_[3.0, np.zeros(d - 1)]
    train = np.vstack([blob(c0, 200), blob(c1, 200)])
    labels = np.r_[np.zeros(200, int), np.ones(200, int)]
    fitted = fit_mahalanobis(train, labels)
    assert np.allclose(fitted["means"][1], c1, atol=0.3)
    inside = np.vstack([blob(c0, 100), blob(c1, 100)])
    outside = blob(np.full(d, 2.0), 200)  # another blob, off both class means
    m = detection_metrics(mahalanobis_scores(inside, fitted["means"], fitted["precision"]),
                          mahalanobis_scores(outside, fitted["means"], fitted["precision"]))
    assert m["auroc"] > 0.99 and m["fpr95"] < 0.05


def test_msp_and_energy_by_hand():
    logits = np.array([[2.0, 0.0], [0.0, 0.0]])
    probs = np.array([[0.7, 0.3], [0.45, 0.55]])  # the Predictor's: msp reads them as they are
    out = Outputs(probs, logits, None)
    assert score_msp(out) == pytest.approx([-0.7, -0.55])
    assert score_energy(out) == pytest.approx([-np.log(np.exp(2.0) + 1.0), -np.log(2.0)])
    with pytest.raises(MedclfError, match="energy score needs logits"):  # an ensemble has no logits of its own
        score_energy(Outputs(probs, None, None))
    with pytest.raises(MedclfError, match="valid: msp, energy, mahalanobis"):
        get_score("odin")
