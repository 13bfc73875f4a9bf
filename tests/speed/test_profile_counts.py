"""`medclf profile`: parameter and FLOP counts checked by hand, and sane memory/speed numbers for a real model."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from medclf.cli.main import app
from medclf.errors import MedclfError
from medclf.models import create_model
from medclf.profile import COLUMNS, count_flops, count_params, profile_models, weights_bytes


def test_params_of_a_conv_and_a_linear_by_hand():
    conv = nn.Conv2d(3, 4, kernel_size=3, padding=1)  # 4*3*3*3 weights + 4 biases
    linear = nn.Linear(10, 5)  # 10*5 + 5
    assert count_params(conv) == 112
    assert count_params(linear) == 55
    assert count_params(nn.Sequential(conv, nn.ReLU(), nn.BatchNorm2d(4))) == 112 + 8  # BN: weight + bias
    assert weights_bytes(nn.BatchNorm2d(4)) == 4 * (4 + 4 + 4 + 4) + 8  # + running mean/var, int64 counter


def test_flops_of_a_conv_and_a_linear_by_hand():
    conv = nn.Conv2d(3, 4, kernel_size=3, padding=1)
    # 2 FLOPs per multiply-add: batch 2 x 4 output channels x 8*8 positions x 3*3*3 inputs each
    assert count_flops(conv, torch.randn(2, 3, 8, 8)) == 2 * 2 * 4 * 8 * 8 * 27
    linear = nn.Linear(10, 5)
    assert count_flops(linear, torch.randn(2, 10)) == 2 * 2 * 10 * 5
    # backward of a first layer: the weight gradient only (the input needs none), as many FLOPs as forward
    assert count_flops(linear, torch.randn(2, 10), backward=True) == 2 * (2 * 2 * 10 * 5)
    assert linear.weight.grad is None  # counting leaves no gradients behind


def test_attention_flops_by_hand():
    """scaled_dot_product_attention on the CPU (FlopCounterMode's registry covers only the CUDA kernels) and
    nn.MultiheadAttention in eval mode (whose no-grad fast path the counter would not see) are counted."""

    class Attention(nn.Module):
        def forward(self, q):
            return nn.functional.scaled_dot_product_attention(q, q, q)

    # q @ k^T and weights @ v: 2 matmuls of 10 x 10 x 8 multiply-adds, per batch item and head
    assert count_flops(Attention(), torch.randn(1, 2, 10, 8)) == 2 * 2 * (10 * 10 * 8) * 2

    class MHA(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)[0]

    projections = 2 * 10 * 16 * (3 * 16) + 2 * 10 * 16 * 16  # qkv in-projection + out-projection, 10 tokens
    assert count_flops(MHA().eval(), torch.randn(1, 10, 16)) == projections + 2 * 2 * (10 * 10 * 8) * 2


@pytest.mark.slow  # ~22 s CPU on the loaded 2-core machine: too slow for make test-fast
def test_resnet18_row_is_sane(tmp_path):
    table = profile_models(["resnet18"], size=32, batch=2, steps=1, device="cpu", out=tmp_path / "prof.md",
                           progress=False)
    row = table.iloc[0]
    model = create_model("resnet18", num_classes=2, input_size=32)
    assert row["params_m"] * 1e6 == pytest.approx(sum(p.numel() for p in model.parameters()))
    # torchvision's resnet18: 1.814 GMACs at 224 px; at 32 px every feature map is 7x smaller per side
    assert row["gflops_fwd"] == pytest.approx(2 * 1.814 / 49, rel=0.01)
    assert 2.5 * row["gflops_fwd"] < row["gflops_train"] < 3.5 * row["gflops_fwd"]
    # a training step holds gradients and two AdamW moments: at least 3 copies of the weights' size
    assert row["train_peak_mb"] > 2.5 * row["weights_mb"]
    assert 0 < row["infer_peak_mb"] < row["train_peak_mb"]
    assert row["train_img_s"] > 0 and row["infer_img_s"] > 0
    assert (row["batch"], row["size"]) == (2, 32) and row["device"].startswith("cpu")
    written = pd.read_csv(tmp_path / "prof.csv")
    assert list(written.columns) == COLUMNS and written["model"].tolist() == ["resnet18"]
    md = (tmp_path / "prof.md").read_text().splitlines()
    assert md[0].startswith("| model | params_m |") and md[2].startswith("| resnet18 | 11.18 |")


def test_unknown_model_is_a_user_error():
    with pytest.raises(MedclfError, match="--models: unknown resnet5000"):
        profile_models(["resnet18", "resnet5000"], size=32, batch=2, steps=1, progress=False)
    result = CliRunner().invoke(app, ["profile", "--models", "nonet"])
    assert isinstance(result.exception, MedclfError)


@pytest.mark.slow
def test_cli_profile_help_lists_options():
    proc = subprocess.run([sys.executable, "-m", "medclf", "profile", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for option in ("--models", "--size", "--batch", "--out"):
        assert option in proc.stdout
