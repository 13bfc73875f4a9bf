"""Issue 21 formulas, by hand: Brier and ECE intervals, temperature, net benefit, split-conformal sets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medclf.errors import MedclfError
from medclf.evaluation.calibration import brier_score, calibration_with_ci, expected_calibration_error
from medclf.evaluation.conformal import class_scores, conformal_quantile, coverage_report
from medclf.evaluation.decision_curve import decision_curve_table, net_benefit
from medclf.evaluation.shift import operating_shift, rate_with_ci, shift_warnings
from medclf.tasks import Task, encode_multi_hot, make_task

BIN = make_task("binary", ["no", "yes"])
MC = make_task("multiclass", ["a", "b", "c"])
ML = make_task("multilabel", ["a", "b"])


def tempered(task: Task, probs, t) -> np.ndarray:
    """The graph's temperature (`Task.tempered`) on NumPy probabilities."""
    return task.tempered(torch.as_tensor(np.asarray(probs)), torch.as_tensor(np.atleast_1d(t))).numpy()


# ---------------------------------------------------------------- Brier, ECE with intervals
def test_brier_by_hand():
    y, p = np.array([0, 1, 1, 0]), np.array([0.1, 0.8, 0.4, 0.5])
    assert brier_score(y, p) == pytest.approx((0.01 + 0.04 + 0.36 + 0.25) / 4)


def test_calibration_intervals_hold_the_point_and_match_the_loop():
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 1, 300)
    y = (rng.uniform(0, 1, 300) < p ** 1.5).astype(int)
    out = calibration_with_ci(y, p, n_boot=200, seed=3)
    assert out["ece"] == pytest.approx(expected_calibration_error(y, p))
    assert out["ci"]["ece"][0] <= out["ece"] <= out["ci"]["ece"][1] + 0.02
    assert out["ci"]["brier"][0] <= out["brier"] <= out["ci"]["brier"][1]
    # the vectorised resample ECE equals the formula on the same resample
    from medclf.evaluation.bootstrap import resample_indices
    idx = next(resample_indices(300, 200, 3))[0]
    one = calibration_with_ci(y[idx], p[idx], n_boot=0)
    assert one["ci"] == {"ece": None, "brier": None}
    assert one["ece"] == pytest.approx(expected_calibration_error(y[idx], p[idx]))


# ---------------------------------------------------------------- temperature
def test_temperature_recovers_a_known_overconfidence():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 20_000)
    y = (rng.uniform(0, 1, z.size) < 1 / (1 + np.exp(-z))).astype(int)
    over = 1 / (1 + np.exp(-3 * z))  # logits 3x too large: T should come out near 3
    probs = np.stack([1 - over, over], axis=1)
    (t,) = BIN.fit_temperature(y, probs)
    assert t == pytest.approx(3.0, rel=0.05)
    fixed = tempered(BIN, probs, t)
    assert BIN.log_loss(y, fixed) < BIN.log_loss(y, probs)
    assert expected_calibration_error(y, fixed[:, 1]) < expected_calibration_error(y, over)
    assert np.allclose(fixed.sum(axis=1), 1.0)
    assert (np.diff(fixed[np.argsort(over), 1]) >= 0).all()  # monotone: no two images change order


def test_temperature_by_hand_and_keeps_one_when_nothing_beats_it():
    p = np.array([[0.8, 0.2], [0.3, 0.7]])
    # softmax(log p / 2): [sqrt .8, sqrt .2] renormalised
    half = np.sqrt([0.8, 0.2]) / np.sqrt([0.8, 0.2]).sum()
    assert tempered(BIN, p, 2.0)[0] == pytest.approx(half)
    assert BIN.fit_temperature([0, 1, 0, 1], np.full((4, 2), 0.5)) == [1.0]


def test_multilabel_gets_one_temperature_per_label():
    rng = np.random.default_rng(2)
    z = rng.normal(0, 2, (5000, 2))
    y = (rng.uniform(0, 1, z.shape) < 1 / (1 + np.exp(-z))).astype(int)
    probs = 1 / (1 + np.exp(-z * np.array([1.0, 0.5])))  # label 0 calibrated, label 1 under-confident
    t = ML.fit_temperature(encode_multi_hot(y), probs)
    assert t[0] == pytest.approx(1.0, abs=0.08) and t[1] == pytest.approx(0.5, rel=0.08)
    assert tempered(ML, probs, t).shape == (5000, 2)


# ---------------------------------------------------------------- decision curves
def test_net_benefit_equals_the_hand_formula():
    y = np.array([1, 1, 0, 0, 0, 1, 0, 0, 0, 0])
    p = np.array([.9, .6, .7, .2, .1, .3, .4, .05, .5, .15])
    out = net_benefit(y, p, [0.1, 0.35, 0.55])
    # p_t = .35: called .9 .6 .7 .4 .5 -> TP 2, FP 3 ; NB = 2/10 - 3/10 * .35/.65
    assert out["tp"].tolist() == [3, 2, 2] and out["fp"].tolist() == [6, 3, 1]
    assert out["net_benefit"][1] == pytest.approx(0.2 - 0.3 * 0.35 / 0.65)
    assert out["net_benefit"][0] == pytest.approx(0.3 - 0.6 * 0.1 / 0.9)  # FP: .7 .2 .1 .4 .5 .15
    assert out["treat_all"][2] == pytest.approx(0.3 - 0.7 * 0.55 / 0.45)
    with pytest.raises(MedclfError, match="strictly between"):
        net_benefit(y, p, [0.0, 0.5])


def test_decision_curve_table_one_block_per_label():
    truth = np.array([[1, 0], [0, 1], [1, 1]])
    probs = np.array([[.8, .1], [.3, .9], [.6, .4]])
    table = decision_curve_table(truth, probs, ["a", "b"], thresholds=[0.5])
    assert table["label"].tolist() == ["a", "b"]
    assert table["net_benefit"].tolist() == pytest.approx([2 / 3, 1 / 3])  # b: TP 1 (.9), FP 0
    assert table["treat_none"].tolist() == [0.0, 0.0]


# ---------------------------------------------------------------- split conformal
def test_conformal_quantile_rank():
    s = np.arange(1, 10) / 10  # n = 9, alpha .2: rank ceil(10 * .8) = 8 -> 0.8
    assert conformal_quantile(s, 0.2) == pytest.approx(0.8)
    assert conformal_quantile(s, 0.05) == math.inf  # rank 10 > 9: every class in every set


def test_lac_and_aps_sets_by_hand():
    cal = np.array([[.9, .05, .05], [.2, .7, .1], [.1, .3, .6], [.5, .4, .1]])
    y = np.array([0, 1, 2, 1])
    band = MC.fit_band(y, cal, alpha=0.25)  # lac scores .1 .3 .4 .6; rank ceil(5*.75)=4
    assert band["qhat"] == [pytest.approx(0.6)] and band["n"] == 4
    new = np.array([[.95, .03, .02], [.45, .45, .1]])
    sets = MC.prediction_sets(new, band)  # p >= .4
    assert sets.tolist() == [[True, False, False], [True, True, False]]
    assert MC.refer(sets).tolist() == [False, True]
    aps = class_scores(np.array([[.5, .3, .2]]), "aps")
    assert aps[0].tolist() == pytest.approx([.5, .8, 1.0])


def test_multilabel_band_per_label():
    p = np.array([[.9, .2], [.1, .6], [.8, .4], [.3, .9]])
    truth = np.array([[1, 0], [0, 1], [1, 0], [0, 1]])
    band = ML.fit_band(encode_multi_hot(truth), p, alpha=0.2)  # rank ceil(5*.8) = 4: the largest score
    assert band["qhat"] == pytest.approx([0.3, 0.4])
    sets = ML.prediction_sets(np.array([[.95, .5], [.75, .65]]), band)
    assert sets[0].tolist() == [[False, True], [False, False]]  # label 1 at .5: neither status within .4
    assert sets[1].tolist() == [[False, True], [False, True]]
    assert ML.refer(sets).tolist() == [True, False]
    assert ML.set_covers(sets, encode_multi_hot(np.array([[1, 0], [1, 1]]))).tolist() == [[True, False],
                                                                                         [True, True]]
    assert ML.refer_columns(np.array([[.95, .5], [.75, .65]]), band) == {"refer": [True, False],
                                                                         "prediction_set": ["b", ""]}


def test_coverage_reaches_one_minus_alpha_on_exchangeable_data():
    rng = np.random.default_rng(5)
    logits = rng.normal(0, 1.5, (6000, 3))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in probs])
    cal, test = slice(0, 2000), slice(2000, None)
    for score in ("lac", "aps"):
        band = MC.fit_band(y[cal], probs[cal], 0.1, score)
        sets = MC.prediction_sets(probs[test], band)
        covered = MC.set_covers(sets, y[test])
        correct = probs[test].argmax(axis=1) == y[test]
        rep = coverage_report(covered, sets.sum(axis=1), MC.refer(sets), correct, 0.1, n_boot=300)
        assert rep["coverage_ci"][0] <= 0.9 <= rep["coverage_ci"][1] or rep["coverage"] >= 0.9
        assert rep["coverage"] > 0.88
        assert rep["accuracy_not_referred"] >= correct.mean()


def test_temperature_is_not_fitted_where_it_cannot_mean_anything():
    separable = np.array([[0.8, 0.2]] * 20 + [[0.3, 0.7]] * 20)  # log-loss falls without end as T -> 0
    y = np.array([0] * 20 + [1] * 20)
    assert BIN.fit_temperature(y, separable) == [1.0]
    rng = np.random.default_rng(0)
    p1 = rng.uniform(0.05, 0.95, 60)
    probs, y = np.stack([1 - p1, p1], axis=1), (rng.uniform(size=60) < p1 ** 3).astype(int)
    assert BIN.fit_temperature(y, probs, min_class=int(y.sum()) + 1) == [1.0]  # too few positives
    assert BIN.fit_temperature(y, probs, min_class=2) != [1.0]


# ---------------------------------------------------------------- has the operating point moved?
def test_wilson_interval_by_hand():
    # p = .9, n = 50, z = 1.96: centre (p + z^2/2n) / (1 + z^2/n), half z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n)
    r = rate_with_ci(45, 5)
    assert r["value"] == 0.9 and r["n"] == 50
    assert r["ci"] == pytest.approx([0.7864, 0.9565], abs=1e-4)
    assert rate_with_ci(0, 0) == {"value": None, "ci": None, "n": 0}


def test_operating_counts_per_scored_column():
    probs = np.array([[.2, .8], [.6, .4], [.3, .7], [.9, .1]])
    task = make_task("binary", ["no", "yes"], threshold=0.5)
    assert task.operating_counts([1, 1, 0, 0], probs) == {"yes": [1, 1, 1, 1]}  # tp fn tn fp
    ml = make_task("multilabel", ["a", "b"], thresholds=[0.5, 0.5])
    masks = encode_multi_hot(np.array([[1, 1], [0, 0], [1, 0], [0, 1]]))
    assert ml.operating_counts(masks, probs) == {"a": [0, 2, 0, 2], "b": [1, 1, 1, 1]}  # a: .6, .9 called


def test_a_shift_is_flagged_only_when_the_intervals_are_apart():
    reference = {"split": "validation", "n": 100, "counts": {"yes": [45, 5, 45, 5]}}  # sens .9, spec .9
    same = operating_shift(reference, {"yes": [40, 10, 43, 7]})  # .8 and .86: intervals overlap
    assert not same["moved"] and same["per_label"]["yes"]["moved"] == []
    moved = operating_shift(reference, {"yes": [49, 1, 10, 40]})  # spec .2 [.11, .33]
    assert moved["moved"] and moved["per_label"]["yes"]["moved"] == ["specificity"]
    (line,) = shift_warnings(moved, None, "medclf recalibrate R --data C --out NEWRUN")
    assert line == ("operating point moved: yes specificity 0.900 [0.786, 0.957] on validation vs 0.200 "
                    "[0.112, 0.330] here (95% intervals apart); re-fit it on a labelled local sample: "
                    "medclf recalibrate R --data C --out NEWRUN")
    low = {"below_target": True, "coverage": 0.8, "coverage_ci": [0.75, 0.85], "target_coverage": 0.9}
    assert shift_warnings(same, low, "fix")[0].startswith("refer band covers 0.800 [0.750, 0.850] of these images")


def test_a_band_on_too_few_images_says_every_image_is_referred():
    from medclf.contract import DataContract
    from medclf.engine.calibrate import fit_decisions
    from medclf.tasks import ThresholdRule

    contract = DataContract("m", 2, ["no", "yes"], 1, 32, 1, [0.5], [0.25], task="binary")
    probs = np.array([[.9, .1], [.8, .2], [.3, .7], [.2, .8], [.6, .4]])
    fit_decisions(contract, probs, np.array([0, 0, 1, 1, 0]), "none", ThresholdRule(min_class=1), 0.1, "lac")
    assert contract.conformal["qhat"] == [math.inf]  # rank ceil(6 * .9) = 6 > 5 images
    assert contract.threshold_warnings[-1] == ("validation: a refer band at alpha 0.1 needs about 1/alpha - 1 = 9 "
                                               "images or more; with 5 every set holds every class, so every image "
                                               "is referred")
    assert BIN.refer(BIN.prediction_sets(probs, contract.conformal)).all()
