"""Fixtures for the explanation tests: small random models and run directories made with the real checkpoint
API (no training: a map is a map whatever the weights, and training would cost the suite minutes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medclf.config import load_config, save_config
from medclf.models import create_model, save_checkpoint

LABELS = ["normal", "pneumonia"]


def make_model(name: str = "resnet18", size: int = 64, seed: int = 0):
    torch.manual_seed(seed)
    return create_model(name, num_classes=2, input_size=size, label_names=LABELS, positive_index=1).eval()


def write_run(run: Path, model, cache_size: int = 32) -> Path:
    """A run directory holding `best.pt` and `config.yaml`, as `medclf train` leaves it."""
    run.mkdir(parents=True, exist_ok=True)
    cfg = load_config(None, [f"model.name={model.contract.model_name}",
                             f"model.input_size={model.contract.input_size}"])
    save_config(cfg, run / "config.yaml")
    save_checkpoint(run / "best.pt", model, model.contract, config={}, extra={"cache_size": cache_size})
    return run


def write_ensemble_run(run: Path, members: list, cache_size: int = 32) -> Path:
    """An ensemble run (`ensemble.json` + `members/<i>/best.pt`) in the layout `medclf ensemble` writes."""
    for i, m in enumerate(members):
        write_run(run / "members" / str(i), m, cache_size)
    save_config(load_config(None, ["model.name=resnet18"]), run / "config.yaml")
    spec = {"format": "medclf-ensemble", "members": [f"members/{i}" for i in range(len(members))],
            "combine": "mean", "weights": [1.0 / len(members)] * len(members), "threshold": 0.5}
    (run / "ensemble.json").write_text(json.dumps(spec))
    return run


@pytest.fixture(scope="module")
def cnn():
    """resnet18 at 64 px: layer4 is a 2 x 2 map, the smallest on which CAMs are not flat."""
    return make_model("resnet18", 64)


@pytest.fixture(scope="module")
def vit():
    return make_model("timm:vit_tiny_patch16_224", 32)


@pytest.fixture(scope="module")
def cnn_run(scratch, request, cnn):
    return write_run(scratch(request, "explain") / "run", cnn)


@pytest.fixture(scope="session")
def model_factory():
    """`make_model(name, size, seed)` for tests that need models of their own."""
    return make_model


@pytest.fixture(scope="session")
def run_factory():
    """(`write_run`, `write_ensemble_run`) for tests that build their own run directories."""
    return write_run, write_ensemble_run
