"""500 images through the explainers: no hook is left on any module, no tensor and no memory accumulates."""

import gc
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from medclf.explain.hooks import hook_counts
from medclf.explain.registry import compute_maps

pytestmark = pytest.mark.slow  # explains 500 images per method (~25 s CPU)

NO_HOOKS = {"forward": 0, "forward_pre": 0, "backward": 0}


def _rss_mb() -> float:
    status = Path("/proc/self/status")
    if not status.exists():
        pytest.skip("needs /proc/self/status (Linux) to read the resident set size")
    line = next(x for x in status.read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def _live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance() on torch.distributed's deprecated aliases warns
        warnings.simplefilter("ignore", FutureWarning)
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


@pytest.mark.parametrize("method", ["gradcam", "featuremaps"])
def test_500_images_leave_no_hooks_tensors_or_memory_behind(model_factory, method):
    model = model_factory("resnet18", 16)  # the smallest input: 500 images cost little, hooks work the same
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(50, 3, 16, 16, generator=gen) for _ in range(10)]  # 10 calls x 50 = 500 images
    for x in batches[:2]:  # warm-up: allocator pools and lazy imports settle
        compute_maps(model, x, method, 1)
    tensors, rss = _live_tensors(), _rss_mb()
    for x in batches[2:]:
        maps = compute_maps(model, x, method, 1)
        assert maps.shape == (50, 16, 16)
        assert hook_counts(model) == NO_HOOKS
        assert all(not m._forward_hooks for m in model.modules())
    assert _live_tensors() - tensors < 5  # a leak of one tensor per call would add 8
    assert _rss_mb() - rss < 25.0  # one batch's activations are a few MB; a leak would grow with every call
    assert np.isfinite(maps).all()
