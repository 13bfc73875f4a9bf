"""Fixtures for the ensemble, compare and study tests: tiny trainings on the shared tiny cache."""

from __future__ import annotations

import pytest

from medclf.config import load_config

# resnet18 at 32 px, one epoch, batch 8: a few seconds per member on a CPU
TINY = ["model.name=resnet18", "model.input_size=32", "data.batch_size=8", "train.epochs=1", "train.lr=0.003",
        "train.warmup_epochs=0", "train.weight_decay=0.0", "train.device=cpu",
        "eval.threshold_min_class=4"]  # the tiny cache's val split: 4 positives, 8 negatives


def tiny_config(*extra: str):
    return load_config(None, TINY + list(extra))


@pytest.fixture(scope="session")
def tiny_cfg():
    """tiny_cfg(*overrides) -> the tiny training Config with extra key=value overrides."""
    return tiny_config


@pytest.fixture(scope="session")
def partition_run(tiny_cache, scratch, request):
    """A 3-member partition ensemble (mean) trained on the tiny cache; tests must not modify it."""
    from medclf.ensemble import train_ensemble

    out = scratch(request, "ens") / "partition3"
    return train_ensemble(tiny_config(), tiny_cache, out, members=3, mode="partition", progress=False)
