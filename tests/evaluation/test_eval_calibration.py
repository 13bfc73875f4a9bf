"""Expected calibration error and reliability-diagram data."""

from __future__ import annotations

import numpy as np
import pytest

from medclf.evaluation.calibration import expected_calibration_error, reliability_curve


def test_perfectly_calibrated_is_near_zero():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 200_000)
    y = (rng.uniform(0, 1, p.size) < p).astype(int)
    assert expected_calibration_error(y, p) < 0.01


def test_constant_predictor_on_balanced_labels():
    y = np.array([0, 1] * 50)
    assert expected_calibration_error(y, np.full(100, 0.9)) == pytest.approx(0.4)


def test_reliability_curve_by_hand():
    # 4 bins of width 0.25; 1.0 falls in the last bin
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0.1, 0.2, 0.3, 0.9, 1.0, 0.8])
    c = reliability_curve(y, p, n_bins=4)
    assert c["count"].tolist() == [2, 1, 0, 3]
    assert c["mean_prob"][0] == pytest.approx(0.15) and c["frac_pos"][0] == 0.0
    assert np.isnan(c["mean_prob"][2]) and np.isnan(c["frac_pos"][2])
    assert c["frac_pos"][3] == pytest.approx(2 / 3)
    assert c["lower"].tolist() == [0.0, 0.25, 0.5, 0.75]
    # ECE = 2/6*|0-0.15| + 1/6*|1-0.3| + 3/6*|2/3-0.9|
    expected = 2 / 6 * 0.15 + 1 / 6 * 0.7 + 3 / 6 * abs(2 / 3 - 0.9)
    assert expected_calibration_error(y, p, n_bins=4) == pytest.approx(expected)
