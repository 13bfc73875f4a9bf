"""Fixtures for the export/profile tests: one tiny model trained one epoch on the shared tiny cache."""

from __future__ import annotations

import shutil

import pytest

from medclf.config import load_config
from medclf.io import write_json

TINY = ["model.name=resnet18", "model.input_size=32", "data.batch_size=8", "train.epochs=1", "train.device=cpu"]


@pytest.fixture(scope="session")
def speed_run(tiny_cache, scratch, request):
    """resnet18 at 32 px trained 1 epoch on `tiny_cache`; tests copy it before writing into it."""
    from medclf.engine.train import train

    return train(load_config(None, TINY), tiny_cache, scratch(request, "speed") / "run", progress=False)


@pytest.fixture()
def run_copy(speed_run, tmp_path):
    """A private copy of the trained run (tests write model.onnx etc. into it)."""
    return shutil.copytree(speed_run, tmp_path / "run")


@pytest.fixture(scope="session")
def ensemble_factory():
    """ensemble_factory(single_run, out, combine=...) -> an ensemble run directory (see make_ensemble_run)."""
    return make_ensemble_run


def make_ensemble_run(single_run, out, combine: str = "mean", weights=(0.5, 0.5), threshold: float = 0.4):
    """An ensemble run directory in medclf's layout (ensemble.json + members/<i>/) whose two members are
    copies of `single_run`, the second with its weights perturbed so the members disagree."""
    import torch

    for i in range(2):
        shutil.copytree(single_run, out / "members" / str(i))
    ckpt = out / "members" / "1" / "best.pt"
    payload = torch.load(ckpt, weights_only=True)
    gen = torch.Generator().manual_seed(1)
    # conv/linear weights only: perturbed BatchNorm statistics could turn negative
    payload["state_dict"] = {k: v + 0.05 * torch.randn(v.shape, generator=gen) if v.dim() >= 2 else v
                             for k, v in payload["state_dict"].items()}
    torch.save(payload, ckpt)
    shutil.copy(single_run / "data_summary.json", out / "data_summary.json")
    write_json(out / "ensemble.json", {"format": "medclf-ensemble", "format_version": 1,
                                       "members": ["members/0", "members/1"], "combine": combine,
                                       "weights": list(weights), "threshold": threshold})
    return out
