"""Hooks that are always released (DESIGN habit 6): every hook here lives inside a `with` block.

A hook left on a module keeps running on every later forward pass and keeps the tensors it stores alive, so
an explainer that forgets one slows the model down and leaks memory image after image. These context managers
remove their handles in `finally`, whatever happens inside the block.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch
from torch import nn


@contextlib.contextmanager
def released(handles: list[torch.utils.hooks.RemovableHandle]) -> Iterator[None]:
    """Remove every handle in `handles` (filled inside the block, too) when the block ends."""
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        handles.clear()


@contextlib.contextmanager
def capture_outputs(modules: Sequence[nn.Module],
                    transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Iterator[list]:
    """Yield a list whose item i holds, after each forward pass, the detached output of `modules[i]`
    (passed through `transform` when given). The list is emptied when the block ends."""
    outputs: list[torch.Tensor | None] = [None] * len(modules)

    def make_hook(i: int) -> Callable:
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            out = (output[0] if isinstance(output, (tuple, list)) else output).detach()
            outputs[i] = transform(out) if transform is not None else out
        return hook

    handles = [m.register_forward_hook(make_hook(i)) for i, m in enumerate(modules)]
    with released(handles):
        try:
            yield outputs
        finally:
            outputs.clear()


def hook_counts(model: nn.Module) -> dict[str, int]:
    """Number of forward, forward-pre and backward hooks left anywhere in `model` (all 0 after explaining)."""
    counts = {"forward": 0, "forward_pre": 0, "backward": 0}
    for module in model.modules():
        counts["forward"] += len(module._forward_hooks)
        counts["forward_pre"] += len(module._forward_pre_hooks)
        counts["backward"] += len(module._backward_hooks) + len(getattr(module, "_backward_pre_hooks", {}))
    return counts
