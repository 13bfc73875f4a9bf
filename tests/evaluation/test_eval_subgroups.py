"""Results per subgroup (evaluation/subgroups.py): per-group metrics are binary_metrics on the group's rows,
small groups carry no numbers, age bands have [lo, hi) edges, and the group-vs-rest AUC test separates a worse
group from identical ones."""

from __future__ import annotations

import numpy as np
import pytest

from medclf.errors import MedclfError
from medclf.evaluation.metrics import binary_metrics
from medclf.evaluation.subgroups import (
    age_groups,
    auc_vs_rest,
    flat_rows,
    group_labels,
    group_order,
    subgroup_rows,
    too_small,
)


def test_group_metrics_are_binary_metrics_on_the_groups_rows():
    # group a: 3 positives 3 negatives, perfectly ranked; group b: 3 and 3, with one swap
    y = np.array([1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0])
    prob = np.array([.9, .8, .7, .3, .2, .1, .9, .6, .4, .5, .2, .1])
    groups = np.array(["a"] * 6 + ["b"] * 6)
    rows = subgroup_rows(y, prob, groups, 0.5, n_boot=50, min_class=3)
    assert [(r["group"], r["n"], r["n_pos"], r["too_small"]) for r in rows] == [("a", 6, 3, False), ("b", 6, 3, False)]
    assert rows[0]["metrics"] == binary_metrics(y[:6], prob[:6], 0.5, n_boot=50)
    assert rows[1]["metrics"] == binary_metrics(y[6:], prob[6:], 0.5, n_boot=50)
    # by hand: b calls .9 .6 .5 positive -> TP 2, FP 1, FN 1; AUC 8 of 9 pairs ordered
    b = rows[1]["metrics"]
    assert (b["tp"], b["fp"], b["fn"], b["tn"]) == (2, 1, 1, 2) and b["roc_auc"] == pytest.approx(8 / 9)
    assert rows[0]["metrics"]["roc_auc"] == 1.0
    assert rows[0]["vs_rest"]["diff"] == pytest.approx(1 / 9)


def test_small_groups_get_n_and_no_numbers():
    assert too_small(30, 9) and too_small(30, 21) and not too_small(20, 10) and too_small(19, 10)
    y = np.array([1, 0] * 15 + [1, 0, 0])
    prob = np.linspace(0, 1, len(y))
    groups = np.array(["big"] * 30 + ["tiny"] * 3)
    big, tiny = subgroup_rows(y, prob, groups, 0.5, n_boot=20, min_class=10)
    assert tiny == {"group": "tiny", "n": 3, "n_pos": 1, "too_small": True, "metrics": None, "vs_rest": None}
    # big has enough images, but its rest (tiny) has not: metrics yes, test against the rest no
    assert big["metrics"]["n"] == 30 and big["vs_rest"] is None


def test_age_bands_have_lower_edges_included_and_unknowns():
    ages = [0, 17.9, 18, 39, 40, 79.5, 80, 199, 200, -1, None, "", float("nan"), "62"]
    assert list(age_groups(ages, (0, 18, 40, 80, 200))) == (
        ["[0, 18)"] * 2 + ["[18, 40)"] * 2 + ["[40, 80)"] * 2 + ["[80, 200)"] * 2 + ["unknown"] * 5 + ["[40, 80)"])
    with pytest.raises(MedclfError, match="increasing"):
        age_groups([1], (0, 40, 40))
    groups = group_labels([70, 5, None], "age")
    assert list(groups) == ["[60, 80)", "[0, 18)", "unknown"]
    assert group_order(groups, "age") == ["[0, 18)", "[60, 80)", "unknown"]


def test_empty_values_are_the_unknown_group_listed_last():
    groups = group_labels(["PA", "", " AP ", None, float("nan")], "view")
    assert list(groups) == ["PA", "unknown", "AP", "unknown", "unknown"]
    assert group_order(groups, "view") == ["AP", "PA", "unknown"]


def _scores(rng, n, separation):
    y = np.arange(n) % 2
    return y, 1 / (1 + np.exp(-(rng.normal(size=n) + separation * (2 * y - 1))))


def test_auc_test_flags_a_clearly_worse_group():
    rng = np.random.default_rng(0)
    y_good, p_good = _scores(rng, 300, 2.0)  # AUC about 0.98
    y_bad, p_bad = _scores(rng, 100, 0.0)  # chance
    y, prob = np.concatenate([y_good, y_bad]), np.concatenate([p_good, p_bad])
    test = auc_vs_rest(y, prob, np.arange(400) >= 300, n_boot=500)
    assert test["diff"] < -0.3 and test["ci"][1] < 0 and test["p_value"] < 0.01 and test["n_valid"] == 500


def test_auc_test_finds_nothing_between_identical_groups():
    rng = np.random.default_rng(1)
    y, prob = _scores(rng, 400, 1.0)
    # the same scores twice: the group and the rest hold identical data
    y, prob = np.concatenate([y, y]), np.concatenate([prob, prob])
    test = auc_vs_rest(y, prob, np.arange(800) < 400, n_boot=500)
    assert test["diff"] == 0.0 and test["ci"][0] < 0 < test["ci"][1] and test["p_value"] > 0.5


def test_table_rows_flatten_metrics_intervals_and_the_test():
    y = np.array([1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0])
    prob = np.array([.9, .8, .7, .3, .2, .1, .9, .6, .4, .5, .2, .1])
    rows = subgroup_rows(y, prob, np.array(["a"] * 6 + ["b"] * 6), 0.5, n_boot=50, min_class=3)
    rows.append({"group": "c", "n": 2, "n_pos": 1, "too_small": True, "metrics": None, "vs_rest": None})
    a, b, c = flat_rows("site", rows, ("roc_auc",))
    assert list(a) == ["column", "group", "n", "n_pos", "too_small", "tp", "fp", "tn", "fn", "roc_auc", "roc_auc_lo",
                       "roc_auc_hi", "auc_diff_vs_rest", "auc_diff_lo", "auc_diff_hi", "p_value"]
    assert (b["tp"], b["fp"], b["tn"], b["fn"], b["roc_auc"]) == (2, 1, 2, 1, pytest.approx(8 / 9))
    assert [b["roc_auc_lo"], b["roc_auc_hi"]] == rows[1]["metrics"]["ci"]["roc_auc"]
    assert b["auc_diff_vs_rest"] == pytest.approx(-1 / 9) and b["p_value"] == rows[1]["vs_rest"]["p_value"]
    assert c["n"] == 2 and all(c[k] is None for k in ("tp", "roc_auc", "roc_auc_lo", "p_value"))
