"""choose_threshold on hand-made examples with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from medclf.errors import MedclfError
from medclf.evaluation.metrics import binary_metrics
from medclf.evaluation.thresholds import choose_threshold

# F1 at each candidate (called positive when prob >= t):
#   t=0.8: 2/4=0.5  t=0.6: 4/5=0.8  t=0.4: 4/6  t=0.3: 6/7 (best)  t=0.2: 6/8  t=0.1: 6/9
# Youden's J:  0.8: 1/3  0.6: 2/3  0.4: 1/3  0.3: 2/3  0.2: 1/3  0.1: 0   -> tie 0.6/0.3, the higher wins
Y = np.array([0, 0, 1, 0, 1, 1])
P = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.8])


def test_f1_max():
    assert choose_threshold(Y, P) == 0.3
    assert choose_threshold(Y, P, method="f1") == 0.3


def test_youden_tie_goes_to_higher_threshold():
    assert choose_threshold(Y, P, method="youden") == 0.6


def test_youden_unique_max():
    # J: 0.9: 1/4  0.7: 1/2  0.5: 3/4 (best)  0.45: 0.55  0.4: 0.35  0.35: 0.6  0.3: 0.4
    y = np.array([0, 0, 0, 1, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.7, 0.9])
    assert choose_threshold(y, p, method="youden") == 0.5


def test_sensitivity_target_by_hand():
    assert choose_threshold(Y, P, method="sensitivity", target=2 / 3) == 0.6
    assert choose_threshold(Y, P, method="sensitivity", target=1.0) == 0.3


def test_sensitivity_target_is_reached_by_the_highest_threshold():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    t = choose_threshold(y, p, method="sensitivity", target=0.9)
    assert binary_metrics(y, p, t, n_boot=0)["recall"] >= 0.9
    next_higher = np.min(p[p > t])
    assert binary_metrics(y, p, next_higher, n_boot=0)["recall"] < 0.9


def test_errors():
    with pytest.raises(MedclfError, match="unknown threshold method 'max'.*youden"):
        choose_threshold(Y, P, method="max")
    with pytest.raises(MedclfError, match="target"):
        choose_threshold(Y, P, method="sensitivity")
    with pytest.raises(MedclfError, match="both classes"):
        choose_threshold([1, 1], [0.2, 0.3])


def test_operating_threshold_falls_back_below_the_minimum_per_class():
    from medclf.evaluation.thresholds import OperatingThreshold, operating_threshold

    # one positive: a fitted F1 threshold would sit on its probability (2.5e-07 on the RSNA sample)
    y, p = np.array([0] * 20 + [1]), np.r_[np.linspace(0.3, 0.9, 20), 2.5e-07]
    chosen = operating_threshold(y, p, min_class=10)
    assert chosen == OperatingThreshold(0.5, "default", "default 0.5: validation has 1 positive (< 10)")
    assert choose_threshold(y, p) == 2.5e-07  # what the run kept before the rule
    few_neg = operating_threshold(1 - y, p, min_class=10, split="fold 2")
    assert few_neg.reason == "default 0.5: fold 2 has 1 negative (< 10)"


def test_operating_threshold_is_fitted_with_enough_of_both_classes():
    from medclf.evaluation.thresholds import OperatingThreshold, operating_threshold

    y, p = np.tile(Y, 4), np.tile(P, 4)  # 12 positives, 12 negatives
    # the F1 choice is the score 0.3; the stored threshold sits midway to the next lower score, 0.2
    assert operating_threshold(y, p, min_class=10) == OperatingThreshold(
        pytest.approx(0.25), "validation", "f1 on 24 validation images (12 positives)")
    assert operating_threshold(y, p, "sensitivity", 0.5, min_class=12).reason == \
        "sensitivity >= 0.5 on 24 validation images (12 positives)"
    assert operating_threshold(y, p, min_class=13).source == "default"
    with pytest.raises(MedclfError, match="unknown threshold method 'f2'"):
        operating_threshold(y, p, "f2")


def test_between_scores_is_the_midpoint_to_the_next_lower_distinct_score():
    from medclf.evaluation.thresholds import between_scores

    assert between_scores([0.1, 0.3, 0.3, 0.6], 0.6) == pytest.approx(0.45)
    assert between_scores([0.1, 0.3, 0.3, 0.6], 0.3) == pytest.approx(0.2)
    assert between_scores([0.4, 0.8], 0.4) == pytest.approx(0.2)  # nothing lower: midway to 0


@pytest.mark.parametrize("method,target", [("f1", None), ("youden", None), ("sensitivity", 0.8)])
def test_no_decision_flips_when_every_probability_moves_by_1e_6(method, target):
    """The stored threshold sits between two validation scores, so no float difference flips a decision."""
    from medclf.evaluation.thresholds import operating_threshold

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    # scores on a 1e-5 grid, so many images sit 1e-5 from the chosen one (a flip at 1e-6 would show)
    p = np.round(np.clip(0.5 * y + rng.normal(0.25, 0.2, 400), 0, 1) / 1e-5) * 1e-5
    chosen = operating_threshold(y, p, method, target, min_class=10)
    assert chosen.source == "validation" and not np.isin(chosen.value, p)
    calls = p >= chosen.value
    for sign in (1.0, -1.0):
        assert np.array_equal(p + sign * 1e-6 >= chosen.value, calls)
        assert np.array_equal(p + sign * 1e-6 * rng.choice([-1, 1], 400) >= chosen.value, calls)
    # ... and the calls are those of the validation score the method chose
    from medclf.evaluation.thresholds import choose_threshold

    assert np.array_equal(calls, p >= choose_threshold(y, p, method, target))
