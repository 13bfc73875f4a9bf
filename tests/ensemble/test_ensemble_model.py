"""The Ensemble module: its probabilities are the members' combination, through the one-model interface."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from medclf.data.cache import Cache
from medclf.data.dataset import CacheDataset
from medclf.errors import MedclfError
from medclf.models import create_model
from medclf.models.ensemble import Ensemble, ensemble_contract
from medclf.runs import Predictor

CPU = torch.device("cpu")


def _members(n=3, size=32, seed=0):
    torch.manual_seed(seed)
    models = [create_model("resnet18", num_classes=2, input_size=size, label_names=["normal", "pneumonia"],
                           positive_index=1).eval() for _ in range(n)]
    # random heads give probabilities near 0.5; scale them so members really differ
    with torch.no_grad():
        for i, m in enumerate(models):
            for p in m.parameters():
                if p.dim() == 2:
                    p.mul_(5.0 * (i + 1))
    return models, [m.contract for m in models]


@pytest.mark.slow  # ~2 s CPU on the loaded 2-core machine: too slow for make test-fast
def test_mean_ensemble_equals_mean_of_members_on_a_cache_split(tiny_cache):
    models, contracts = _members()
    ens = Ensemble(models, contracts, ensemble_contract(contracts[0], 0.5, "ens"))
    test = CacheDataset(Cache.open(tiny_cache), split="test")
    got = Predictor(ens, ens.contract).predict_dataset(test).probs
    singles = np.stack([Predictor(m, c).predict_dataset(test).probs for m, c in zip(models, contracts)])
    assert got.shape == (12, 2)
    assert singles[:, :, 1].std(axis=0).mean() > 0.01  # the members do disagree
    np.testing.assert_allclose(got, singles.mean(axis=0), atol=1e-6)


def test_forward_is_log_of_combined_probabilities():
    models, contracts = _members(2)
    ens = Ensemble(models, contracts, ensemble_contract(contracts[0], 0.5, "ens"), weights=[0.75, 0.25])
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        p = [torch.softmax(m(x), dim=1) for m in models]
        expected = 0.75 * p[0] + 0.25 * p[1]
        torch.testing.assert_close(torch.exp(ens(x)), expected, atol=1e-6, rtol=0)
        np.testing.assert_allclose(torch.softmax(ens(x), dim=1).numpy(), expected.numpy(), atol=1e-6)


def test_vote_is_the_fraction_of_members_at_their_own_thresholds():
    models, contracts = _members()
    # member 0 always votes positive (threshold 0), member 1 never (above 1), member 2 by its probability
    contracts = [replace(contracts[0], threshold=0.0), replace(contracts[1], threshold=1.5),
                 replace(contracts[2], threshold=0.5)]
    ens = Ensemble(models, contracts, ensemble_contract(contracts[0], 0.5, "ens"), combine="vote")
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        p2 = torch.softmax(models[2](x), dim=1)[:, 1]
        probs = torch.softmax(ens(x), dim=1)
    expected = (1 + (p2 >= 0.5).float()) / 3  # 1/3 or 2/3 per image
    torch.testing.assert_close(probs[:, 1], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(probs[:, 0], 1 - expected, atol=1e-6, rtol=0)


def test_member_with_another_input_size_sees_its_own_transform(tiny_cache):
    small, _ = _members(1, size=16, seed=1)
    big, _ = _members(1, size=32, seed=2)
    contracts = [small[0].contract, big[0].contract]
    ens = Ensemble([small[0], big[0]], contracts, ensemble_contract(big[0].contract, 0.5, "ens"))
    test = CacheDataset(Cache.open(tiny_cache), split="test")
    both = Predictor(ens, ens.contract).predict_dataset(test)
    members, combined = both.member_probs, both.probs
    # the 32 px cache resized to 16 by the member's own transform
    alone = Predictor(small[0], small[0].contract).predict_dataset(test).probs
    np.testing.assert_allclose(members[0], alone, atol=1e-5)
    np.testing.assert_allclose(combined, members.mean(axis=0), atol=1e-6)


def test_bad_combine_and_weights_are_refused():
    models, contracts = _members(2)
    contract = ensemble_contract(contracts[0], 0.5, "ens")
    with pytest.raises(MedclfError, match="unknown combine 'median'"):
        Ensemble(models, contracts, contract, combine="median")
    with pytest.raises(MedclfError, match="summing to 1"):
        Ensemble(models, contracts, contract, weights=[0.9, 0.9])
