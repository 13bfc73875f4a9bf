"""`medclf compare` for K-class and multilabel runs: macro ROC AUC and its paired bootstrap, on hand-made tables."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from medclf.compare import compare_runs, comparison_markdown
from medclf.engine.evaluate import write_evaluation
from medclf.errors import MedclfError
from medclf.evaluation.macro_auc import macro_roc_auc, paired_macro_auc
from medclf.tasks import encode_multi_hot

NAMES = ["a", "b", "c"]


def softmax(n, seed, signal=1.5):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    logits = rng.normal(size=(n, 3)) + signal * np.eye(3)[y]
    return y, np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def test_macro_auc_is_scikit_learns_ovr_macro_and_the_mean_of_label_aucs():
    y, p = softmax(60, 0)
    assert macro_roc_auc(y, p) == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert macro_roc_auc(np.eye(3, dtype=int)[y], p) == macro_roc_auc(y, p)  # indices and one-hot agree
    rng = np.random.default_rng(1)
    hot = rng.integers(0, 2, size=(40, 4))
    probs = np.clip(0.3 * hot + 0.7 * rng.random((40, 4)), 0, 1)
    expected = np.mean([roc_auc_score(hot[:, k], probs[:, k]) for k in range(4)])
    assert macro_roc_auc(hot, probs) == pytest.approx(expected)
    assert macro_roc_auc(np.zeros(6, int), np.full((6, 3), 1 / 3)) is None  # classes 1, 2 absent: undefined
    with pytest.raises(MedclfError, match="class indices must be in 0..2"):
        macro_roc_auc([0, 3], np.full((2, 3), 1 / 3))


def test_paired_macro_auc_of_a_perfect_model_against_a_hand_computed_one():
    # 6 images, 2 per class; A swaps the two top scores of class 0 with a class-1 image
    y = np.array([0, 0, 1, 1, 2, 2])
    perfect = np.eye(3)[y] * 0.7 + 0.1  # rows 0.8, 0.1, 0.1
    flawed = perfect.copy()
    flawed[2] = [0.85, 0.05, 0.1]  # a class-1 image scored highest for class 0, lowest for class 1
    # class 0: both positives (0.8) beat 3 of 4 negatives -> 6/8; class 1: 0.05 beats none, 0.8 all four -> 4/8;
    # class 2: 1. Macro: (0.75 + 0.5 + 1) / 3
    a = 0.75
    assert roc_auc_score(y, flawed, multi_class="ovr") == pytest.approx(a)
    test = paired_macro_auc(y, flawed, perfect, n_boot=300, seed=0)
    assert test["metric"] == "macro_roc_auc" and test["b"] == 1.0 and test["a"] == pytest.approx(a)
    assert test["diff"] == pytest.approx(1.0 - a) and test["diff"] > 0
    lo, hi = test["ci"]
    assert 0 <= lo <= hi and test["n_valid"] < 300  # resamples missing a class are left out
    assert 0 < test["p_value"] <= 1
    same = paired_macro_auc(y, perfect, perfect, n_boot=50)
    assert same["diff"] == 0 and same["ci"] == [0.0, 0.0] and same["p_value"] == 1.0


def fake_multiclass_run(root, name, y, probs, threshold=0.5):
    run = root / name
    run.mkdir(parents=True)
    table = pd.DataFrame({"id": [f"im{i:03d}" for i in range(len(y))], "label": y, "prob": probs[:, 2],
                          **{f"prob_{n}": probs[:, k] for k, n in enumerate(NAMES)}})
    write_evaluation(table, threshold, run, "test", n_boot=50, positive_index=2, label_names=NAMES)
    table.to_csv(run / "predictions_test.csv", index=False)
    return run


@pytest.mark.slow  # ~3 s CPU on the loaded 2-core machine: too slow for make test-fast
def test_compare_two_three_class_runs_adds_the_macro_auc_test(tmp_path):
    y, weak = softmax(90, 2, signal=0.5)
    _, strong = softmax(90, 3, signal=3.0)
    a, b = fake_multiclass_run(tmp_path, "weak", y, weak), fake_multiclass_run(tmp_path, "strong", y, strong)
    frame = compare_runs([a, b], n_boot=200, seed=0)
    expected = paired_macro_auc(y, weak, strong, n_boot=200, seed=0)
    assert frame["macro_auc"].tolist() == pytest.approx([macro_roc_auc(y, weak), macro_roc_auc(y, strong)])
    assert frame.loc[1, "d_macro_auc"] == pytest.approx(expected["diff"]) and expected["diff"] > 0.2
    assert [frame.loc[1, "d_macro_auc_lo"], frame.loc[1, "d_macro_auc_hi"]] == pytest.approx(expected["ci"])
    assert frame.loc[1, "p_macro_auc"] == pytest.approx(expected["p_value"]) and expected["p_value"] < 0.05
    saved = json.loads((a / "metrics_test.json").read_text())["multiclass"]["ci"]["macro_roc_auc"]
    assert [frame.loc[0, "macro_auc_lo"], frame.loc[0, "macro_auc_hi"]] == pytest.approx(saved)
    assert pd.notna(frame.loc[1, "d_auc"])  # the binary view (positive class c vs rest) is still compared
    md = comparison_markdown(frame)
    assert "Δmacro AUC vs weak" in md and f"{expected['diff']:+.3f} [" in md


def test_compare_multilabel_tables_decodes_bit_masks(tmp_path):
    rng = np.random.default_rng(4)
    hot = rng.integers(0, 2, size=(50, 3))
    runs, probs = [], {}
    for name, noise in (("ml_a", 0.9), ("ml_b", 0.3)):
        probs[name] = np.clip((1 - noise) * hot + noise * rng.random((50, 3)), 0, 1)
        run = tmp_path / name
        run.mkdir()
        pd.DataFrame({"id": [f"x{i}" for i in range(50)], "label": encode_multi_hot(hot),
                      **{f"prob_{n}": probs[name][:, k] for k, n in enumerate(NAMES)}}).to_csv(
            run / "predictions_test.csv", index=False)
        (run / "metrics_test.json").write_text(json.dumps({"task": "multilabel", "n": 50}))
        runs.append(run)
    frame = compare_runs(runs, n_boot=100)
    expected = paired_macro_auc(hot, probs["ml_a"], probs["ml_b"], n_boot=100)
    assert frame["macro_auc"].tolist() == pytest.approx([macro_roc_auc(hot, probs[n]) for n in ("ml_a", "ml_b")])
    assert frame.loc[1, "d_macro_auc"] == pytest.approx(expected["diff"])
    assert frame.loc[1, "p_macro_auc"] == pytest.approx(expected["p_value"])
    assert frame["d_auc"].isna().all()  # no single positive probability: no binary paired test


def test_binary_comparisons_have_no_macro_columns(tmp_path):
    y = np.array([0, 1] * 5)
    runs = []
    for name, seed in (("a", 0), ("b", 1)):
        run = tmp_path / name
        run.mkdir()
        table = pd.DataFrame({"id": [f"i{i}" for i in range(10)], "label": y,
                              "prob": np.random.default_rng(seed).random(10)})
        write_evaluation(table, 0.5, run, "test", n_boot=20)
        table.to_csv(run / "predictions_test.csv", index=False)
        runs.append(run)
    frame = compare_runs(runs, n_boot=50)
    assert not [c for c in frame.columns if "macro" in c] and "macro" not in comparison_markdown(frame)


@pytest.mark.slow  # ~3 s CPU on the loaded 2-core machine: too slow for make test-fast
def test_the_command_prints_the_macro_auc_columns(tmp_path):
    from typer.testing import CliRunner

    from medclf.cli.main import app

    y, weak = softmax(45, 5, signal=0.5)
    _, strong = softmax(45, 6, signal=3.0)
    a, b = fake_multiclass_run(tmp_path, "weak", y, weak), fake_multiclass_run(tmp_path, "strong", y, strong)
    r = CliRunner().invoke(app, ["compare", str(a), str(b), "--n-boot", "100", "--out", str(tmp_path / "c.md")])
    assert r.exit_code == 0, r.output
    diff = paired_macro_auc(y, weak, strong, n_boot=100)["diff"]
    assert "| macro AUC | Δmacro AUC vs weak | p (macro AUC) |" in r.output and f"{diff:+.3f} [" in r.output
    assert pd.read_csv(tmp_path / "c.csv")["d_macro_auc"].iloc[1] == pytest.approx(diff)


@pytest.mark.slow
def test_two_evaluated_three_class_runs(tiny_multiclass_run, tmp_path):
    """A trained 3-class run and its copy, both evaluated on test: the macro AUC is evaluate's, the difference 0."""
    import shutil

    from medclf.engine.evaluate import evaluate_run

    runs = [shutil.copytree(tiny_multiclass_run, tmp_path / name) for name in ("first", "again")]
    saved = [evaluate_run(r, split="test", n_boot=20, device="cpu", progress=False)["multiclass"] for r in runs]
    frame = compare_runs(runs, n_boot=50)
    assert frame["macro_auc"].tolist() == pytest.approx([s["macro"]["roc_auc"] for s in saved])
    assert frame.loc[1, "d_macro_auc"] == 0 and frame.loc[1, "p_macro_auc"] == 1.0
    assert frame.loc[0, "macro_auc_lo"] == pytest.approx(saved[0]["ci"]["macro_roc_auc"][0])
