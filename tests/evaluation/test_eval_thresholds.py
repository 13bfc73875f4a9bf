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
