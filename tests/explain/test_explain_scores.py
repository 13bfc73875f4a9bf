"""Scores against boxes on hand-made maps, with hand-computed values."""

import numpy as np
import pytest

from medclf.explain.scores import box_area_fraction, box_mask, energy_in_box, is_flat, mean_ci, peak, pointing_hit


def test_box_mask_takes_pixels_whose_centres_lie_inside():
    mask = box_mask([[1, 2, 3, 2]], (6, 6))  # columns 1..3, rows 2..3
    assert mask.sum() == 6
    assert mask[2:4, 1:4].all() and not mask[:2].any() and not mask[:, 4:].any()
    # [0.6, 1.6) holds only the centre 1.5 -> column 1; rows [0, 1) hold centre 0.5 -> row 0
    assert np.argwhere(box_mask([[0.6, 0.0, 1.0, 1.0]], (4, 4))).tolist() == [[0, 1]]
    # boxes reaching past the border are clipped; two overlapping boxes form their union
    assert box_mask([[3, 3, 5, 5]], (4, 4)).sum() == 1
    assert box_mask([[0, 0, 2, 2], [1, 1, 2, 2]], (4, 4)).sum() == 7


def test_pointing_game_hits_inside_and_misses_outside():
    heat = np.zeros((32, 32), dtype=np.float32)
    heat[10, 12] = 1.0  # row 10, column 12
    assert pointing_hit(heat, [[8, 8, 8, 8]]) is True  # columns 8..15, rows 8..15
    assert pointing_hit(heat, [[20, 20, 8, 8]]) is False
    assert pointing_hit(heat, [[20, 20, 8, 8], [12, 10, 1, 1]]) is True  # any box counts
    flat = np.full((32, 32), 0.5, dtype=np.float32)
    assert is_flat(flat) and pointing_hit(flat, [[0, 0, 32, 32]]) is False  # nothing stands out: a miss


def test_a_plateau_of_maxima_points_at_its_centre():
    heat = np.zeros((64, 64), dtype=np.float32)
    heat[:16, :16] = 1.0  # a 2 x 2 CAM upsampled: flat up to the corner
    assert peak(heat) == (7, 7)  # argmax alone would say (0, 0), the image's corner
    assert pointing_hit(heat, [[4, 4, 8, 8]]) and not pointing_hit(heat, [[0, 0, 3, 3]])


def test_energy_in_box_is_the_share_of_mass_inside():
    heat = np.ones((4, 4))
    heat[1:3, 1:3] = 5.0  # 4 pixels of 5 inside, 12 of 1 outside
    assert energy_in_box(heat, [[1, 1, 2, 2]]) == pytest.approx(20 / 32)
    assert energy_in_box(np.zeros((4, 4)), [[1, 1, 2, 2]]) == 0.0
    # a uniform map puts the box's area fraction in the box: the chance level
    assert energy_in_box(np.ones((8, 8)), [[0, 0, 4, 2]]) == pytest.approx(box_area_fraction([[0, 0, 4, 2]], (8, 8)))
    assert box_area_fraction([[0, 0, 4, 2]], (8, 8)) == pytest.approx(8 / 64)


def test_mean_ci_brackets_the_mean():
    const = mean_ci([0.25] * 10, n_boot=200)
    assert const == {"mean": 0.25, "ci": [0.25, 0.25], "n": 10}
    hits = mean_ci([1, 0] * 10, n_boot=500, seed=1)
    assert hits["mean"] == 0.5 and hits["n"] == 20
    assert 0.2 < hits["ci"][0] < 0.5 < hits["ci"][1] < 0.8
    assert mean_ci([], n_boot=10) == {"mean": None, "ci": [None, None], "n": 0}
    assert mean_ci([1.0, float("nan")], n_boot=10)["n"] == 1  # undefined values are left out
