"""`medclf compare`: metrics side by side and paired tests, only for runs evaluated on the same images."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from medclf.compare import compare_runs, comparison_markdown
from medclf.engine.evaluate import write_evaluation
from medclf.errors import MedclfError
from medclf.evaluation.bootstrap import paired_bootstrap

LABELS = np.array([0, 0, 0, 0, 1, 1, 0, 1, 0, 1])
# A ranks one negative (0.6) above one positive (0.55): AUC = 23/24; B ranks perfectly: AUC = 1
PROB_A = np.array([0.10, 0.20, 0.30, 0.60, 0.55, 0.90, 0.15, 0.80, 0.05, 0.70])
PROB_B = np.array([0.05, 0.10, 0.20, 0.30, 0.65, 0.95, 0.25, 0.85, 0.15, 0.75])


def fake_run(root, name, probs, labels=LABELS, ids=None, split="test", threshold=0.5, shuffle=False):
    """A run directory as `medclf evaluate` leaves it: predictions_<split>.csv and metrics_<split>.json."""
    run = root / name
    run.mkdir(parents=True)
    ids = ids if ids is not None else [f"img{i:02d}" for i in range(len(labels))]
    table = pd.DataFrame({"id": ids, "label": labels, "prob": probs, "split": split, "model": name})
    write_evaluation(table, threshold, run, split, n_boot=200)
    if shuffle:  # row order must not matter: runs are aligned by image id
        table = table.sample(frac=1.0, random_state=1)
    table.to_csv(run / f"predictions_{split}.csv", index=False)
    return run


def test_table_has_intervals_and_paired_differences(tmp_path):
    a = fake_run(tmp_path, "single", PROB_A)
    b = fake_run(tmp_path, "ensemble", PROB_B, shuffle=True)
    frame = compare_runs([a, b], out=tmp_path / "cmp" / "comparison.md", n_boot=500)
    assert frame["run"].tolist() == ["single", "ensemble"]
    assert frame["roc_auc"].tolist() == pytest.approx([23 / 24, 1.0])
    # F1 at 0.5: A calls 5 positive (TP 4, FP 1) -> 8/9; B calls exactly the 4 positives -> 1
    assert frame["f1"].tolist() == pytest.approx([8 / 9, 1.0])
    assert frame.loc[0, "roc_auc_lo"] <= 23 / 24 <= frame.loc[0, "roc_auc_hi"]
    assert pd.isna(frame.loc[0, "d_auc"]) and pd.isna(frame.loc[0, "p_auc"])
    y = (LABELS == 1).astype(int)
    for metric, short, diff in (("roc_auc", "auc", 1 / 24), ("f1", "f1", 1 / 9)):
        expected = paired_bootstrap(y, PROB_A, PROB_B, metric, 0.5, 0.5, n_boot=500, seed=0)
        assert frame.loc[1, f"d_{short}"] == pytest.approx(diff)
        assert [frame.loc[1, f"d_{short}_lo"], frame.loc[1, f"d_{short}_hi"]] == pytest.approx(expected["ci"])
        assert frame.loc[1, f"p_{short}"] == pytest.approx(expected["p_value"])
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| ensemble | 10 (4) | 1.000 [" in md and "+0.042 [" in md
    csv = pd.read_csv(tmp_path / "cmp" / "comparison.csv")
    assert csv["d_auc"].iloc[1] == pytest.approx(1 / 24)
    html = (tmp_path / "cmp" / "comparison.html").read_text()
    assert "<table>" in html and "ΔAUC vs single" in html


@pytest.mark.slow  # ~2 s CPU on the loaded 2-core machine: too slow for make test-fast
def test_refuses_runs_evaluated_on_different_images(tmp_path):
    a = fake_run(tmp_path, "on_test", PROB_A)
    other_ids = [f"ext{i:02d}" for i in range(10)]
    b = fake_run(tmp_path, "on_external", PROB_B, ids=other_ids)
    with pytest.raises(MedclfError, match="runs on_test and on_external were evaluated on different test sets"):
        compare_runs([a, b])
    flipped = fake_run(tmp_path, "relabelled", PROB_B, labels=1 - LABELS)
    with pytest.raises(MedclfError, match="runs on_test and relabelled have different labels"):
        compare_runs([a, flipped])


@pytest.mark.slow  # ~2 s CPU on the loaded 2-core machine: too slow for make test-fast
def test_val_split_and_missing_evaluation(tmp_path):
    a = fake_run(tmp_path, "a", PROB_A, split="val")
    b = fake_run(tmp_path, "b", PROB_B, split="val")
    frame = compare_runs([a, b], split="val", n_boot=100)
    assert frame["split"].tolist() == ["val", "val"]
    assert "Split `val`" in comparison_markdown(frame)
    with pytest.raises(MedclfError, match=r"no predictions_test.csv or metrics_test.json \(run `medclf evaluate"):
        compare_runs([a, b], split="test")


def test_same_folder_names_are_told_apart(tmp_path):
    a = fake_run(tmp_path / "study1", "run", PROB_A)
    b = fake_run(tmp_path / "study2", "run", PROB_B)
    assert compare_runs([a, b], n_boot=50)["run"].tolist() == ["study1/run", "study2/run"]


@pytest.mark.slow
def test_cli_error_is_one_line_naming_the_runs(tmp_path):
    a = fake_run(tmp_path, "a", PROB_A)
    b = fake_run(tmp_path, "b", PROB_B[:8], labels=LABELS[:8])
    r = subprocess.run([sys.executable, "-m", "medclf", "compare", str(a), str(b)], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr == ("error: runs a and b were evaluated on different test sets (10 vs 8 images, ids differ); "
                        "compare needs the same images\n")
