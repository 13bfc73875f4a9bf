"""The Task objects (medclf.tasks) on hand-made probabilities: activations, truth, positives, thresholds chosen
between validation scores, decisions, table columns and the class a map explains."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medclf.contract import DataContract
from medclf.tasks import (
    BinaryTask,
    MulticlassTask,
    MultilabelTask,
    ThresholdRule,
    make_task,
    task_for,
    task_for_metrics,
)

NAMES3 = ["disc", "square", "bar"]


def _contract(task: str, names: list[str], positive_index: int = 1) -> DataContract:
    return DataContract(model_name="resnet18", num_classes=len(names), label_names=names,
                        positive_index=positive_index, input_size=32, in_chans=1, mean=[0.5], std=[0.25], task=task)


def test_one_class_per_task_type_from_a_contract():
    assert type(task_for(_contract("binary", ["normal", "pneumonia"]))) is BinaryTask
    assert type(task_for(_contract("multiclass", NAMES3, 2))) is MulticlassTask
    assert type(task_for(_contract("multilabel", NAMES3, 0))) is MultilabelTask
    assert type(make_task(None, NAMES3)) is MulticlassTask  # an old contract: the class count decides
    assert type(task_for_metrics({"task": "multilabel", "label_names": NAMES3})) is MultilabelTask
    assert type(task_for_metrics({"multiclass": {}}, NAMES3)) is MulticlassTask


def test_activations_and_their_inverse():
    logits = torch.tensor([[0.0, 1.0, -2.0]])
    single, multi = MulticlassTask(NAMES3), MultilabelTask(NAMES3)
    assert torch.allclose(single.probabilities(logits), torch.softmax(logits, dim=1))
    assert torch.allclose(multi.probabilities(logits), torch.sigmoid(logits))
    for task in (single, multi):
        back = task.probabilities(task.logits(task.probabilities(logits)))
        assert torch.allclose(back, task.probabilities(logits), atol=1e-6)
    assert multi.log_odds(logits, 1).item() == pytest.approx(1.0)  # the sigmoid's log-odds is its logit
    assert single.log_odds(logits, 1).item() == pytest.approx(1.0 - np.log(1.0 + np.exp(-2.0)))


def test_truth_and_what_positive_means():
    binary = BinaryTask(["normal", "pneumonia"])
    assert binary.truth([0, 1, 1]).ravel().tolist() == [0, 1, 1]
    assert binary.positive([0, 1, 1]).tolist() == [False, True, True]
    multi = MultilabelTask(NAMES3)
    masks = [0, 1, 5, 2]  # none, disc, disc|bar, square
    assert multi.truth(masks).tolist() == [[0, 0, 0], [1, 0, 0], [1, 0, 1], [0, 1, 0]]
    assert multi.positive(masks).tolist() == [False, True, True, True]  # any finding
    assert multi.positive(masks, 0).tolist() == [False, True, True, False]  # holds disc (not: mask == 0)
    assert multi.label_texts(masks) == ["No Finding", "disc", "disc|bar", "square"]


def test_decisions_and_columns_at_the_operating_thresholds():
    probs = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
    single = MulticlassTask(NAMES3, positive_index=2, threshold=0.3)
    assert single.decisions(probs) == ["bar", "bar"]
    assert single.decisions(probs + [[0, 0, -1e-3]] * 2) == ["square", "disc"]  # else the likeliest other class
    assert list(single.lead_columns(probs)) == ["prob", "predicted", "threshold"]
    assert single.class_column_names() == ["prob_disc", "prob_square", "prob_bar"]
    multi = MultilabelTask(NAMES3, thresholds=[0.5, 0.5, 0.3])
    assert multi.decisions(probs) == ["square|bar", "disc|bar"]
    assert multi.lead_column_names() == ["prob_disc", "prob_square", "prob_bar", "pred_disc", "pred_square",
                                         "pred_bar", "predicted"]
    assert multi.calls(probs).tolist() == [[False, True, True], [True, False, True]]


def test_maps_explain_the_task_s_default_class():
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]])
    assert BinaryTask(["a", "b"]).explain_targets(np.array([[0.9, 0.1]])).tolist() == [1]  # the positive class
    assert MulticlassTask(NAMES3, 2).explain_targets(probs).tolist() == [1, 0]  # the predicted class
    assert MultilabelTask(NAMES3, 0).explain_targets(probs).tolist() == [1, 0]  # the most probable finding
    assert MultilabelTask(NAMES3, 0).explain_targets(probs, 2).tolist() == [2, 2]


def test_thresholds_per_label_sit_between_validation_scores_and_survive_a_nudge():
    """Each label's stored threshold lies strictly between two of its validation scores, so moving every
    probability by 1e-6 either way changes no call (issue 19, item 2)."""
    rng = np.random.default_rng(1)
    y = rng.random((300, 3)) < 0.4
    probs = np.round(np.clip(0.45 * y + rng.normal(0.3, 0.18, y.shape), 0, 1) / 1e-5) * 1e-5
    masks = (y * [1, 2, 4]).sum(axis=1)
    task = MultilabelTask(NAMES3)
    chosen = task.choose_thresholds(masks, probs, ThresholdRule(min_class=10))
    contract = _contract("multilabel", NAMES3, 0)
    task.store_thresholds(contract, chosen)
    assert contract.thresholds == chosen.values and chosen.source == "validation"
    assert chosen.reason.startswith("disc: f1 on 300 validation images")
    for k in range(3):
        assert not np.isin(chosen.values[k], probs[:, k])
    calls = task.calls(probs)
    for sign in (1.0, -1.0):
        assert np.array_equal(task_for(contract).calls(probs + sign * 1e-6), calls)


def test_a_single_label_threshold_is_stored_with_its_reason():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 200)
    probs = np.clip(0.4 * labels + rng.random(200) * 0.6, 0, 1)
    probs = np.stack([1 - probs, probs], axis=1)
    task = BinaryTask(["normal", "pneumonia"])
    contract = _contract("binary", ["normal", "pneumonia"])
    task.store_thresholds(contract, task.choose_thresholds(labels, probs, ThresholdRule(min_class=10)))
    assert contract.threshold_source == "validation" and contract.threshold_reason.startswith("f1 on 200 validation")
    assert not np.isin(contract.threshold, probs[:, 1]) and task.threshold == contract.threshold
