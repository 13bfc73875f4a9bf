"""The multilabel building blocks against hand-computed values and scikit-learn/torch: the bit-mask truth,
the rarest-label stratum, the losses, the metrics and the balanced sampler."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, roc_auc_score

from medclf.data.samplers import BalancedSampler, sampling_classes
from medclf.errors import ConfigError, MedclfError
from medclf.evaluation.multilabel import multilabel_metrics
from medclf.losses import create_multilabel_loss, multi_hot_target
from medclf.tasks import NO_FINDING, encode_multi_hot, label_counts, label_set_name, multi_hot, rarest_label, task_of

HOT = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0], [1, 0, 0], [1, 1, 0]])


def test_bit_masks_round_trip_and_name_the_labels():
    masks = encode_multi_hot(HOT)
    assert masks.tolist() == [5, 0, 2, 1, 3]
    assert multi_hot(masks, 3).tolist() == HOT.tolist()
    assert [label_set_name(m, ["a", "b", "c"]) for m in masks] == ["a|c", NO_FINDING, "b", "a", "a|b"]
    assert label_counts(masks, 3).tolist() == [3, 2, 1]
    assert multi_hot_target(torch.tensor(masks), 3).tolist() == HOT.tolist()


def test_rarest_label_is_the_stratum_and_none_is_k():
    # counts a=3, b=2, c=1: an image with a and c is stratified by c, one with a and b by b, none by K=3
    assert rarest_label(encode_multi_hot(HOT), 3).tolist() == [2, 3, 1, 0, 1]


def test_the_task_comes_from_the_declaration_or_the_class_count():
    assert task_of(["n", "p"]) == "binary" and task_of(["a", "b", "c"]) == "multiclass"
    assert task_of(["a", "b"], "multilabel") == "multilabel"
    with pytest.raises(ValueError, match="valid: binary, multiclass, multilabel"):
        task_of(["a", "b"], "multi")


def test_losses_equal_torch_on_the_unpacked_truth():
    logits = torch.tensor([[2.0, -1.0, 0.5], [-0.3, 0.2, -2.0], [1.0, 1.0, 1.0]])
    masks = torch.tensor([5, 0, 2])
    y = torch.tensor([[1.0, 0, 1], [0, 0, 0], [0, 1, 0]])
    bce = F.binary_cross_entropy_with_logits(logits, y)
    assert create_multilabel_loss("ce", 3)(logits, masks) == pytest.approx(float(bce), abs=1e-6)
    # focal with gamma 0 and no alpha is BCE; ASL with no focusing and no clip is BCE summed over the labels
    assert create_multilabel_loss("focal", 3, gamma=0.0)(logits, masks) == pytest.approx(float(bce), abs=1e-6)
    asl = create_multilabel_loss("asl", 3, gamma_neg=0.0, gamma_pos=0.0, clip=0.0)(logits, masks)
    assert asl == pytest.approx(3 * float(bce), abs=1e-5)


def test_positive_weights_are_negatives_over_positives():
    loss = create_multilabel_loss("bce", 3, label_counts=[10, 25, 40], n_images=50, pos_weight=True)
    assert loss.loss.pos_weight.tolist() == pytest.approx([4.0, 1.0, 0.25])
    with pytest.raises(ConfigError, match="every label needs positives and negatives"):
        create_multilabel_loss("bce", 3, label_counts=[0, 25, 40], n_images=50, pos_weight=True)
    with pytest.raises(ConfigError, match="'soft_f1' is not defined for a multilabel task; valid: asl, bce, ce, focal"):
        create_multilabel_loss("soft_f1", 3)


def test_metrics_equal_scikit_learn_and_hand_counts():
    rng = np.random.default_rng(1)
    y = (rng.random((120, 3)) < 0.3).astype(int)
    p = np.clip(0.45 * y + 0.6 * rng.random((120, 3)), 0, 1)
    t = [0.5, 0.4, 0.6]
    m = multilabel_metrics(encode_multi_hot(y), p, ["a", "b", "c"], t, n_boot=50)
    for average in ("macro", "weighted", "micro"):
        assert m[average]["roc_auc"] == pytest.approx(roc_auc_score(y, p, average=average))
        assert m[average]["pr_auc"] == pytest.approx(average_precision_score(y, p, average=average))
    for k, name in enumerate("abc"):
        called = p[:, k] >= t[k]
        tp = int((called & (y[:, k] == 1)).sum())
        assert m["per_label"][name]["tp"] == tp and m["per_label"][name]["threshold"] == t[k]
        assert m["per_label"][name]["roc_auc"] == pytest.approx(roc_auc_score(y[:, k], p[:, k]))
    called = p >= np.array(t)
    tp, fp = int((called & (y == 1)).sum()), int((called & (y == 0)).sum())
    assert m["micro"]["precision"] == pytest.approx(tp / (tp + fp))
    assert m["exact_match"] == pytest.approx(float((called == y.astype(bool)).all(axis=1).mean()))
    low, high = m["ci"]["macro_roc_auc"]
    assert low < m["macro"]["roc_auc"] < high


def test_a_label_absent_from_the_split_has_no_auc_and_the_averages_skip_it():
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    p = np.array([[0.9, 0.1], [0.2, 0.3], [0.7, 0.2], [0.4, 0.1]])
    m = multilabel_metrics(encode_multi_hot(y), p, ["a", "b"], [0.5, 0.5], n_boot=0)
    assert m["labels_without_auc"] == ["b"] and m["per_label"]["b"]["roc_auc"] is None
    assert m["macro"]["roc_auc"] == pytest.approx(1.0)
    with pytest.raises(MedclfError, match=r"shape \(N, 2\)"):
        multilabel_metrics(encode_multi_hot(y), p[:, :1], ["a", "b"], [0.5, 0.5], n_boot=0)


class _Labelled(torch.utils.data.Dataset):
    def __init__(self, masks, k):
        self.labels, self.task, self.num_labels = np.asarray(masks), "multilabel", k

    def __len__(self):
        return len(self.labels)


def test_the_balanced_sampler_draws_each_rarest_label_alike():
    # 90 images with only a, 9 with a and b (stratum b), 1 with nothing: three strata drawn 1/3 each
    dataset = _Labelled([1] * 90 + [3] * 9 + [0], 2)
    assert np.bincount(sampling_classes(dataset)).tolist() == [90, 9, 1]
    draws = np.array(list(BalancedSampler(dataset, num_samples=30_000, seed=0)))
    strata = sampling_classes(dataset)[draws]
    assert np.bincount(strata, minlength=3) / len(draws) == pytest.approx([1 / 3] * 3, abs=0.02)


def test_ood_scores_of_a_multilabel_model_read_sigmoids():
    from medclf.evaluation.ood import Outputs, score_energy, score_msp

    logits = np.array([[2.0, -1.0], [0.0, 0.0]])
    probs = 1 / (1 + np.exp(-logits))  # the Predictor's sigmoids (rows need not sum to 1)
    out = Outputs(probs, logits, None, multilabel=True)
    assert score_msp(out) == pytest.approx([-1 / (1 + np.exp(-2.0)), -0.5])
    # joint energy: minus the sum of log(1 + e^logit) over the findings
    assert score_energy(out) == pytest.approx([-(np.log1p(np.exp(2.0)) + np.log1p(np.exp(-1.0))), -2 * np.log(2.0)])
