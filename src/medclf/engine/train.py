"""The training loop: one readable function, everything it needs built beforehand by `build_setup`.

The same function runs on one process and on every rank under torchrun (DistributedDataParallel); the DDP
plumbing lives in `medclf.engine.distributed`, and only global rank 0 writes the run directory, holding its
lock (`medclf.outdirs`) from the checks before anything is written to the end of training.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from medclf.config import Config, save_config
from medclf.data.cache import Cache
from medclf.data.summary import data_summary
from medclf.device import autocast, epoch_seed, seed_everything
from medclf.engine.calibrate import fit_decisions
from medclf.engine.distributed import DistContext, all_reduce_sum, broadcast_buffers, init_distributed, run_on_main
from medclf.engine.inference import predict_sharded
from medclf.engine.setup import TrainingSetup, build_setup
from medclf.engine.state import EarlyStopper, check_resume, restore_state, save_epoch, write_history
from medclf.errors import MedclfError
from medclf.io import write_json
from medclf.models.checkpoint import read_checkpoint
from medclf.outdirs import FolderLock, claim_output_dir, remove_if_unused
from medclf.runs import Predictor, RunDir, open_checkpoint
from medclf.runs.ood import fit_detector
from medclf.tasks import ThresholdRule, task_for
from medclf.tracking import Tracker, check_trackers, open_tracker, parent_kind


def train(cfg: Config, data_dir: str | Path, out_dir: str | Path, resume: bool = False, progress: bool = True,
          train_rows: np.ndarray | None = None) -> Path:
    """Train one model on the cache's train split (or on `train_rows`, cache rows, e.g. an ensemble member's),
    validate each epoch, write the run directory. Returns it.

    Under torchrun (or inside a process group the caller initialised, e.g. an ensemble training its members)
    every rank calls this; the group is joined, never destroyed here. A second writer of the same `out_dir` is
    refused while this one runs; a refused or failed start leaves no folder it created behind.
    """
    out_dir = Path(out_dir)
    check_trackers(cfg)
    dist = init_distributed(cfg.train.device)
    lock = FolderLock(out_dir, "run")  # held by rank 0 only
    # rank 0's answer, on every rank
    resume, created = run_on_main(lambda: _check_out_dir(cfg, data_dir, out_dir, resume, lock), dist)
    try:
        return _train(cfg, data_dir, out_dir, resume, progress, dist, train_rows)
    except BaseException:
        lock.release()  # first, so that a folder created now and still unused can go
        if created and dist.is_main:
            remove_if_unused(out_dir)
        raise
    finally:
        lock.release()


def _train(cfg: Config, data_dir: str | Path, out_dir: Path, resume: bool, progress: bool,
           dist: DistContext, train_rows: np.ndarray | None) -> Path:
    seed_everything(cfg.train.seed)  # the initial weights depend on the seed only (DDP also copies rank 0's)
    s = build_setup(cfg, data_dir, out_dir, dist, train_rows=train_rows)
    progress = progress and dist.is_main
    run_on_main(lambda: _write_run_files(s), dist)
    tracker = open_tracker(out_dir, cfg, resume=resume) if dist.is_main else Tracker([])

    with tracker:
        tracker.log_config(cfg)
        ema = _make_ema(s) if cfg.train.ema else None
        history: list[dict] = []
        stopper = EarlyStopper(cfg.train.early_stop_metric, cfg.train.patience)
        start = restore_state(s, ema, stopper, history) if resume else 0
        if cfg.train.contrastive:  # representation first, then the epochs below fine-tune (or linear-probe) it
            from medclf.robust.contrastive import contrastive_pretrain

            contrastive_pretrain(s, progress=progress, resumed=start > 0)  # resumed: only re-applies a probe's freeze

        for epoch in range(start, cfg.train.epochs):
            if stopper.should_stop:
                break
            t0 = time.perf_counter()
            train_loss = train_one_epoch(s, epoch, ema, progress)
            eval_model = ema.module if ema is not None else s.model
            row = {"epoch": epoch + 1, "train_loss": train_loss, **validate(s, eval_model),
                   "lr": s.optimizer.param_groups[-1]["lr"], "seconds": time.perf_counter() - t0}
            history.append(row)
            improved = stopper.update(row)  # every rank holds the same row, so all stop at the same epoch
            # B023 is a false alarm here: run_on_main calls the lambda at once, in this iteration
            run_on_main(lambda: save_epoch(s, eval_model, ema, stopper, history, epoch, improved), dist)  # noqa: B023
            run_on_main(lambda: write_history(out_dir, history, stopper.metric), dist)
            tracker.log_epoch(row)
            if progress:
                print(_epoch_line(row, improved))

        run_on_main(lambda: finalize_run(s, progress), dist)
        _log_trained(tracker, RunDir(out_dir))
    return out_dir


def _log_trained(tracker: Tracker, rd: RunDir) -> None:
    """The curves and history with the run's tracker, and the model itself (an ensemble logs its own, combined)."""
    tracker.log_image("curves", rd.curves_path)
    tracker.log_artifact(rd.history_path)
    if parent_kind() != "ensemble":
        tracker.log_model(rd.path)


def _check_out_dir(cfg: Config, data_dir: str | Path, out_dir: Path, resume: bool,
                   lock: FolderLock) -> tuple[bool, bool]:
    """Rank 0, before anything is written: the cache opens, OUT is a run folder (or new, or empty) and ours
    alone (its lock taken), and a resume continues the same recipe. Returns (resume, OUT created now)."""
    cache_hash = Cache.open(data_dir).meta.get("content_hash")  # a wrong --data fails before OUT is touched
    if resume and not RunDir(out_dir).last.is_file():
        raise MedclfError(f"--resume: {out_dir} holds no last.pt (nothing to resume); drop --resume to start a "
                          "new run there")
    created = not out_dir.exists()
    claim_output_dir(out_dir, "run", replace=True)  # only checks: a refused second writer creates nothing
    try:
        lock.acquire()
        claim_output_dir(out_dir, "run")
        if not resume and RunDir(out_dir).last.exists():
            raise MedclfError(f"{out_dir} already holds a run (last.pt); use --resume or another --out")
        if resume:
            check_resume(out_dir, cfg, cache_hash)
    except BaseException:
        lock.release()
        if created:
            remove_if_unused(out_dir)
        raise
    return resume, created


def _write_run_files(s: TrainingSetup) -> None:
    s.out_dir.mkdir(parents=True, exist_ok=True)
    save_config(s.cfg, RunDir(s.out_dir).config_path)
    write_json(RunDir(s.out_dir).data_summary_path, data_summary(s.cache))


def train_one_epoch(s: TrainingSetup, epoch: int, ema, progress: bool) -> float:
    seed = epoch_seed(s.cfg.train.seed, epoch, s.dist.rank)
    torch.manual_seed(seed)  # dropout and any other torch randomness in this epoch
    augment_rng = torch.Generator().manual_seed(seed)
    s.train_model.train()
    total, count = 0.0, 0
    bar = s.epoch_batches(epoch, f"epoch {epoch + 1}/{s.cfg.train.epochs}", progress)
    for step, (images, labels, _) in enumerate(bar):
        x = s.train_transform.unit(images.to(s.device, non_blocking=True), augment_rng)
        y = labels.to(s.device, non_blocking=True)
        with autocast(s.device, s.cfg.train.amp):
            loss = s.objective(s.train_model, x, y)  # through DDP, so backward averages gradients over ranks
        # summed over ranks: every rank sees the same value, so all stop together if one diverges
        batch_loss, batch_n = all_reduce_sum([loss.item() * len(y), len(y)], s.dist)
        if not math.isfinite(batch_loss):
            raise MedclfError(f"training diverged at epoch {epoch + 1} step {step} (loss {batch_loss / batch_n}); "
                              "lower train.lr")
        s.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if s.cfg.train.clip_grad:
            torch.nn.utils.clip_grad_norm_(s.model.parameters(), s.cfg.train.clip_grad)
        s.optimizer.step()
        s.scheduler.step()
        if ema is not None:
            ema.update_parameters(s.model)
        total += batch_loss
        count += batch_n
        bar.set_postfix(loss=f"{total / count:.4f}")
    # each rank's BatchNorm statistics moved with its own last batches; rank 0's are saved, so all use those
    broadcast_buffers(s.model, s.dist)
    if ema is not None:
        broadcast_buffers(ema.module, s.dist)
    return total / max(1, count)


@torch.no_grad()
def validate(s: TrainingSetup, model: torch.nn.Module) -> dict:
    """Validation loss and the task's figures at 0.5 (the operating point is chosen after training):
    `Task.validation_row`.

    Under DDP the ranks share the predictions and gather them, so every rank computes the same row.
    """
    predictor = Predictor(model, s.contract, device=s.device, detectors=[])
    probs = predict_sharded(predictor, s.val_set, s.dist, batch_size=s.cfg.eval.batch_size)
    return task_for(s.contract).validation_row(s.val_set.labels, probs, s.loss_fn, s.device)


def finalize_run(s: TrainingSetup, progress: bool = False) -> None:
    """With the best weights: choose the operating threshold on validation and fit the OOD detector on the
    training rows, both through the Predictor the run will predict with; store them in best.pt. Why the
    threshold is what it is goes into the contract too, and its warnings to stderr."""
    from medclf.models.checkpoint import save_checkpoint

    run = open_checkpoint(RunDir(s.out_dir).best, s.device)
    # the run's test-time flip, so the threshold fits the probabilities it will be compared with
    predictor = Predictor(run.model, run.contract, tta_flip=s.cfg.eval.tta_flip, device=s.device, detectors=[])
    raw = predictor.predict_dataset(s.val_set, batch_size=s.cfg.eval.batch_size).probs
    contract, e = run.contract, s.cfg.eval
    fit_decisions(contract, raw, s.val_set.labels, e.calibrate, ThresholdRule.from_config(s.cfg), e.conformal_alpha,
                  e.conformal_score)
    for warning in contract.threshold_warnings:  # printed by rank 0 alone, once, whatever `progress` says
        print(f"warning: {s.out_dir}: {warning}", file=sys.stderr)
    contract.ood = _fit_ood(s, predictor, progress)
    payload = read_checkpoint(run.dir.best)
    save_checkpoint(run.dir.best, run.model, contract, payload["config"], payload.get("extra"))


def _fit_ood(s: TrainingSetup, predictor: Predictor, progress: bool) -> dict | None:
    """The Mahalanobis detector (eval.ood_detector); a model it cannot be fitted for keeps none, with a note."""
    if not s.cfg.eval.ood_detector:
        return None
    try:
        return fit_detector(predictor, s.train_set, s.val_set, fit_max=s.cfg.eval.ood_fit_max, seed=s.cfg.train.seed,
                            batch_size=s.cfg.eval.batch_size, progress=progress)
    except MedclfError as err:
        print(f"note: no out-of-distribution detector for {s.out_dir}: {err}", file=sys.stderr)
        return None


def _make_ema(s: TrainingSetup):
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(s.model, multi_avg_fn=get_ema_multi_avg_fn(s.cfg.train.ema), use_buffers=True)


def _epoch_line(row: dict, improved: bool) -> str:
    def fmt(v):
        return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.4f}"

    return (f"epoch {row['epoch']}: train_loss {fmt(row['train_loss'])} val_loss {fmt(row['val_loss'])} "
            f"val_auc {fmt(row['val_auc'])} val_f1 {fmt(row['val_f1'])} ({row['seconds']:.1f}s)"
            + (" *best*" if improved else ""))

