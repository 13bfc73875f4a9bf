"""What survives an interruption: checkpoints per epoch, history, early stopping, and resuming from last.pt."""

from __future__ import annotations

import math
import pickle
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from medclf.config import flat_keys, outcome_config
from medclf.errors import MedclfError
from medclf.io import atomic_path
from medclf.runs.layout import RunDir

if TYPE_CHECKING:
    from medclf.config import Config


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

    @classmethod
    def kept_epoch(cls, history: pd.DataFrame, metric: str) -> int | None:
        """The epoch whose weights best.pt holds: the last improvement when `history` is replayed through
        this rule (the curves and the report mark it). None when `metric` is not a column of `history`."""
        if metric not in history.columns or "epoch" not in history.columns:
            return None
        stopper, kept = cls(metric, None), None
        for row in history.to_dict("records"):
            if stopper.update(row):
                kept = int(row["epoch"])
        return kept

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
    save_checkpoint(RunDir(s.out_dir).last, eval_model, s.contract, config, {**extra, "train_state": train_state})
    if improved:
        save_checkpoint(RunDir(s.out_dir).best, eval_model, s.contract, config, extra)


def restore_state(s, ema, stopper: EarlyStopper, history: list[dict]) -> int:
    """Load last.pt's training state into the freshly built setup; returns the epoch to start from.

    Under DDP only rank 0 reads the file (the run directory is on its machine) and sends the state to all ranks,
    so every rank resumes from identical weights, optimiser moments and history.
    """
    from medclf.engine.distributed import run_on_main

    state = run_on_main(lambda: read_train_state(RunDir(s.out_dir).last), s.dist)
    s.model.load_state_dict(state["model"])
    s.optimizer.load_state_dict(state["optimizer"])
    s.scheduler.load_state_dict(state["scheduler"])
    stopper.load_state_dict(state["stopper"])
    if ema is not None and state.get("ema") is not None:
        ema.load_state_dict(state["ema"])
    history.extend(state["history"])
    return int(state["epoch"]) + 1


def read_train_state(path: Path, mmap: bool = False) -> dict:
    """The `train_state` stored in last.pt, on the CPU (load_state_dict moves each tensor to its parameter's device).

    With `mmap`, tensors stay on disk until touched: reading the epoch and config of a large run costs nothing.
    A missing, truncated or refused file is a one-line MedclfError naming it.
    """
    payload = _read_last(path, mmap)
    state = (payload.get("extra") or {}).get("train_state")
    if state is None:
        raise MedclfError(f"--resume: {path} holds no training state")
    return state


def _read_last(path: Path, mmap: bool) -> dict:
    import torch

    from medclf.models.checkpoint import load_refusal

    if not path.exists():
        raise MedclfError(f"--resume: {path} does not exist (nothing to resume)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:  # weights_only refuses anything but tensors and plain types
        raise MedclfError(f"--resume: {path}: refused ({load_refusal(err)}); medclf checkpoints hold only tensors "
                          "and plain values, so this file was not written by medclf train") from None
    except (RuntimeError, EOFError, ValueError, OSError) as err:  # truncated (killed while copying), not a zip
        raise MedclfError(f"--resume: {path}: cannot read it ({load_refusal(err)[:160]}); the file is "
                          "truncated or not a checkpoint, so this run cannot be resumed: train into a new "
                          "--out") from None
    if not isinstance(payload, dict):
        raise MedclfError(f"--resume: {path}: not a medclf checkpoint")
    return payload


# Config keys a resume may change. They decide speed (loader processes, evaluation batch, kernels), not the
# recipe: at most floating-point rounding differs. (An ensemble member's training rows are an argument, not a
# config key; the ensemble's plan.json guards which rows they are.) Every other key alters
# the result and is refused, train.device too (it switches bf16 autocast on and off). train.epochs may grow when
# the learning rate at each step does not depend on it (schedule constant or step), so the steps already taken
# are the ones a longer run takes.
RESUME_FREE_KEYS = ("data.workers", "eval.batch_size", "train.compile", "train.channels_last")
EPOCH_FREE_SCHEDULES = ("constant", "step")


def check_resume(out_dir: Path, cfg: Config, cache_hash: str | None) -> tuple[int, bool]:
    """Refuse to resume `out_dir` with a config (or cache) that alters the result, naming what changed; returns
    (epochs done, finished) and says on stderr where training continues. Reads last.pt memory-mapped."""
    path = RunDir(out_dir).last
    payload = _read_last(path, mmap=True)
    state = (payload.get("extra") or {}).get("train_state")
    if state is None:
        raise MedclfError(f"--resume: {path} holds no training state")
    done, saved = int(state["epoch"]) + 1, payload.get("config") or {}
    changed = _changed_keys(saved, cfg.to_dict(), done)
    if changed:
        listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, old, new in changed[:5])
        more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        raise MedclfError(f"--resume: {out_dir} was trained with other settings ({listed}{more}); they change the "
                          f"result, so resume with the run's own settings ({RunDir(out_dir).config_path}) or train "
                          "into a new --out")
    old_hash = _summary_hash(out_dir)
    if old_hash and cache_hash and old_hash != cache_hash:
        raise MedclfError(f"--resume: {out_dir} was trained on another cache (content hash {old_hash[:12]}, this "
                          f"one {cache_hash[:12]}); resume with the same --data or train into a new --out")
    total = cfg.train.epochs
    stopper = state.get("stopper") or {}
    stopped = cfg.train.patience is not None and stopper.get("bad_epochs", 0) > cfg.train.patience
    finished = done >= total or stopped
    if finished:
        how = f"stopped early after epoch {done} of {total}" if done < total else f"{done} of {total} epochs"
        print(f"{out_dir}: the run is finished ({how}); nothing to resume", file=sys.stderr, flush=True)
    else:
        print(f"resuming {out_dir} from epoch {done + 1} of {total} ({done} done)", file=sys.stderr, flush=True)
    return done, finished


def _changed_keys(saved: dict, wanted: dict, done: int) -> list[tuple[str, object, object]]:
    old, new = flat_keys(outcome_config(saved)), flat_keys(outcome_config(wanted))
    changed = []
    for key in new:  # a key the saved config lacks is newer than the run: its value then cannot be compared
        if key not in old or key in RESUME_FREE_KEYS or old[key] == new[key]:
            continue
        if (key == "train.epochs" and new.get("train.schedule") in EPOCH_FREE_SCHEDULES
                and isinstance(new.get(key), int) and new[key] >= done):
            continue
        changed.append((key, old.get(key), new.get(key)))
    return changed


def _summary_hash(out_dir: Path) -> str | None:
    try:
        return (RunDir(out_dir).data_summary() or {}).get("content_hash")
    except (OSError, ValueError, AttributeError):
        return None


def saved_epochs(out_dir: Path) -> int | None:
    """Epochs last.pt holds (None when there is none or it cannot be read): what a resume would start after."""
    try:
        return int(read_train_state(RunDir(out_dir).last, mmap=True)["epoch"]) + 1
    except (MedclfError, KeyError, TypeError, ValueError):
        return None


def write_history(out_dir: Path, history: list[dict], metric: str | None = None) -> None:
    """history.csv and curves.png; with `metric` (train.early_stop_metric) the curves mark the kept epoch."""
    from medclf.evaluation.plots import plot_curves

    frame = pd.DataFrame(history)
    with atomic_path(RunDir(out_dir).history_path) as tmp:
        frame.to_csv(tmp, index=False)
    kept = EarlyStopper.kept_epoch(frame, metric) if metric else None
    plot_curves(frame, RunDir(out_dir).curves_path, kept_epoch=kept, kept_metric=metric)
