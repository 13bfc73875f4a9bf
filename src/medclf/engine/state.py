"""What survives an interruption: checkpoints per epoch, history, early stopping, and resuming from last.pt."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from medclf.errors import MedclfError
from medclf.io import atomic_path


class EarlyStopper:
    """Tracks the best value of one history column; losses are minimised, everything else maximised."""

    def __init__(self, metric: str, patience: int | None):
        self.metric = metric
        self.patience = patience
        self.best: float | None = None
        self.best_loss: float | None = None  # val_loss at the best epoch, to break ties of a saturated metric
        self.bad_epochs = 0

    @property
    def higher_is_better(self) -> bool:
        return not self.metric.endswith("loss")

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_epochs > self.patience

    def update(self, row: dict) -> bool:
        if self.metric not in row:
            raise MedclfError(f"train.early_stop_metric '{self.metric}' is not a history column ({', '.join(row)})")
        value = row[self.metric]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            value = -math.inf if self.higher_is_better else math.inf
        loss = row.get("val_loss")
        better = self.best is None or (value > self.best if self.higher_is_better else value < self.best)
        # a saturated metric (val AUC 1.0 on a small set) ties from an early epoch on: the lower loss then wins
        tie = self.best is not None and value == self.best and loss is not None and self.best_loss is not None
        if better or (tie and loss < self.best_loss):
            self.best, self.best_loss, self.bad_epochs = value, loss, 0
            return True
        self.bad_epochs += 1
        return False

    def state_dict(self) -> dict:
        return {"best": self.best, "best_loss": self.best_loss, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]
        self.best_loss = state.get("best_loss")


def save_epoch(s, eval_model, ema, stopper: EarlyStopper, history: list[dict], epoch: int, improved: bool) -> None:
    """last.pt carries the full training state (one atomic file, so it is never out of step with itself)."""
    from medclf.models.checkpoint import save_checkpoint

    config = s.cfg.to_dict()
    train_state = {
        "epoch": epoch,
        "optimizer": s.optimizer.state_dict(),
        "scheduler": s.scheduler.state_dict(),
        "stopper": stopper.state_dict(),
        "history": history,
        "model": s.model.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
    }
    # inference must bring new images to the same size and grey-level normalisation as the cache held
    extra = {"epoch": epoch + 1, "cache_size": s.cache.size, "cache_norm": s.cache.meta.get("params", {}).get("norm")}
    save_checkpoint(s.out_dir / "last.pt", eval_model, s.contract, config, {**extra, "train_state": train_state})
    if improved:
        save_checkpoint(s.out_dir / "best.pt", eval_model, s.contract, config, extra)


def restore_state(s, ema, stopper: EarlyStopper, history: list[dict]) -> int:
    """Load last.pt's training state into the freshly built setup; returns the epoch to start from.

    Under DDP only rank 0 reads the file (the run directory is on its machine) and sends the state to all ranks,
    so every rank resumes from identical weights, optimiser moments and history.
    """
    from medclf.engine.distributed import run_on_main

    state = run_on_main(lambda: read_train_state(s.out_dir / "last.pt"), s.dist)
    s.model.load_state_dict(state["model"])
    s.optimizer.load_state_dict(state["optimizer"])
    s.scheduler.load_state_dict(state["scheduler"])
    stopper.load_state_dict(state["stopper"])
    if ema is not None and state.get("ema") is not None:
        ema.load_state_dict(state["ema"])
    history.extend(state["history"])
    return int(state["epoch"]) + 1


def read_train_state(path: Path) -> dict:
    """The `train_state` stored in last.pt, on the CPU (load_state_dict moves each tensor to its parameter's device)."""
    import torch

    if not path.exists():
        raise MedclfError(f"--resume: {path} does not exist (nothing to resume)")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    state = (payload.get("extra") or {}).get("train_state")
    if state is None:
        raise MedclfError(f"--resume: {path} holds no training state")
    return state


def write_history(out_dir: Path, history: list[dict]) -> None:
    from medclf.evaluation.plots import plot_curves

    frame = pd.DataFrame(history)
    with atomic_path(out_dir / "history.csv") as tmp:
        frame.to_csv(tmp, index=False)
    plot_curves(frame, out_dir / "curves.png")
