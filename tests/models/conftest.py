"""Shared fixtures for the model tests: each (name, kwargs) is built once per session (big models are slow)."""

from __future__ import annotations

import socket

import pytest
import torch

from medclf.models import create_model


@pytest.fixture(scope="session")
def built():
    cache: dict = {}

    def get(name: str, num_classes: int = 3, **kw):
        key = (name, num_classes, tuple(sorted(kw.items())))
        if key not in cache:
            torch.manual_seed(0)
            cache[key] = create_model(name, num_classes, **kw).eval()
        return cache[key]

    return get


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_network_env(monkeypatch, tmp_path):
    """Empty torch hub and Hugging Face caches, and an HTTPS proxy on a closed local port: the network is
    unreachable on any machine (so no test ever downloads), and the reachability probe is exercised."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{closed_port()}")
    for name in ("HF_HUB_CACHE", "MEDCLF_OFFLINE", "HF_HUB_OFFLINE", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path
