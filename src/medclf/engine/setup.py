"""Everything the training loop needs, built by factories before it starts (DESIGN habit 6)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from medclf.config import Config
from medclf.contract import DataContract
from medclf.data.cache import Cache
from medclf.data.dataset import CacheDataset, make_loader
from medclf.data.samplers import create_sampler
from medclf.data.transforms import Augment, BatchTransform, make_transform
from medclf.engine.calibrate import check_calibration_options
from medclf.engine.distributed import DistContext, check_same_cache, wrap_model
from medclf.engine.optim import create_optimizer, create_scheduler
from medclf.errors import ConfigError, DataError
from medclf.models import create_model
from medclf.tasks import task_for_cache

# objective(model, x_unit, y) -> loss; x_unit is the augmented batch in [0,1] before normalisation, so
# adversarial objectives can perturb it in pixel space. Registered by name (train.adversarial).
Objective = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class TrainingSetup:
    cfg: Config
    out_dir: Path
    cache: Cache
    device: torch.device
    model: torch.nn.Module
    contract: DataContract
    train_set: CacheDataset
    val_set: CacheDataset
    sampler: object
    loader: torch.utils.data.DataLoader
    train_transform: BatchTransform
    loss_fn: torch.nn.Module
    objective: Objective
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    steps_per_epoch: int
    # under torchrun: the DistributedDataParallel wrapper of `model`, the one to train through (`model` itself
    # otherwise); `model` stays the bare ClassifierModel for checkpoints, EMA and evaluation
    train_model: torch.nn.Module | None = None
    dist: DistContext = field(default_factory=DistContext)

    def __post_init__(self) -> None:
        if self.train_model is None:
            self.train_model = self.model

    def epoch_batches(self, sampler_epoch: int, desc: str, progress: bool) -> tqdm:
        """One epoch's training batches behind a progress bar: the sampler reseeded for `sampler_epoch`, and no
        more than `steps_per_epoch` batches read (the cap stops the loader instead of fetching one to drop)."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(sampler_epoch)
        return tqdm(itertools.islice(self.loader, self.steps_per_epoch), total=self.steps_per_epoch, desc=desc,
                    disable=not progress, leave=False)


def build_setup(cfg: Config, data_dir: str | Path, out_dir: str | Path, dist: DistContext | None = None,
                train_rows: np.ndarray | None = None) -> TrainingSetup:
    """`dist` (from `init_distributed`) says which rank this is; None builds for one process on train.device.
    `train_rows`: the cache rows to train on (an ensemble member's; repeats allowed), default the train split."""
    from medclf.engine.distributed import init_distributed

    dist = dist if dist is not None else init_distributed(cfg.train.device)
    if dist.enabled and cfg.train.contrastive:
        raise ConfigError("train.contrastive: contrastive pre-training runs on one process only; run it without "
                          "torchrun / --gpus")
    if dist.enabled and cfg.train.sync_bn and cfg.train.adversarial == "advprop":
        raise ConfigError("train.sync_bn=true cannot be combined with train.adversarial=advprop (its dual batch "
                          "norms are not SyncBatchNorm)")
    cache = Cache.open(data_dir)
    check_same_cache(cache.meta.get("content_hash"), dist)
    check_task_options(cfg, cache)
    check_calibration_options(cfg)
    device = dist.device
    train_set = CacheDataset(cache, indices=cache.indices("train") if train_rows is None else np.asarray(train_rows))
    val_set = CacheDataset(cache, split="val")
    if len(train_set) == 0:
        raise DataError(f"{data_dir}: the training split is empty")
    if len(val_set) == 0:
        raise DataError(f"{data_dir}: the validation split is empty (prepare with --val > 0)")

    model = create_model(
        cfg.model.name,
        num_classes=len(cache.label_names),
        pretrained=cfg.model.pretrained,
        weights=cfg.model.weights,
        in_chans=cfg.model.in_chans,
        input_size=cfg.model.input_size,
        drop_rate=cfg.model.drop_rate,
        label_names=list(cache.label_names),
        positive_index=cache.positive_index,
        task=cache.task,
    )
    model.to(device)
    if cfg.train.channels_last and device.type == "cuda":
        model.to(memory_format=torch.channels_last)

    loss_fn = task_loss(cfg, cache, train_set.labels).to(device)
    # every rank draws the same global epoch and keeps its share: the epoch has the same length as on one process
    sampler = create_sampler(cfg.data.sampler, train_set, num_samples=cfg.data.epoch_samples, seed=cfg.train.seed,
                             num_replicas=dist.world_size, rank=dist.rank)
    loader = make_loader(train_set, cfg.data.batch_size, sampler=sampler, workers=cfg.data.workers,
                         pin_memory=device.type == "cuda")
    steps = len(loader) if cfg.train.max_steps_per_epoch is None else min(len(loader), cfg.train.max_steps_per_epoch)
    if cfg.train.adversarial == "advprop":  # its auxiliary batch norms must exist before the optimizer is built
        from medclf.robust.advprop import AdvPropModel

        model = AdvPropModel(model)  # checkpoints unwrap it (.module): best.pt holds the plain classifier
    optimizer = create_optimizer(model, cfg.train, device)
    train_transform = make_transform(model.contract, train=True, augment=Augment.from_config(cfg.data))
    objective = create_objective(cfg, loss_fn, train_transform)
    return TrainingSetup(
        cfg=cfg, out_dir=Path(out_dir), cache=cache, device=device, model=model, contract=model.contract,
        train_set=train_set, val_set=val_set, sampler=sampler, loader=loader, train_transform=train_transform,
        loss_fn=loss_fn, objective=objective, optimizer=optimizer,
        scheduler=create_scheduler(optimizer, cfg.train, steps), steps_per_epoch=steps,
        # wraps the final model
        train_model=compiled(wrap_model(model, dist, sync_bn=cfg.train.sync_bn), cfg), dist=dist,
    )


def check_task_options(cfg: Config, cache: Cache) -> None:
    """Options defined for one kind of task refuse the other kind's cache, naming what to change."""
    task_for_cache(cache).check_options(cfg, cache.path)


def compiled(model: torch.nn.Module, cfg: Config) -> torch.nn.Module:
    """`train.compile=true`: torch.compile the module the loop trains through; `.model` (saved) stays eager."""
    if not cfg.train.compile:
        return model
    return torch.compile(model)


def task_loss(cfg: Config, cache: Cache, train_labels: np.ndarray) -> torch.nn.Module:
    """The configured loss in the cache's task's family, with the training split's counts it may weigh by."""
    return task_for_cache(cache).create_loss(cfg.loss, train_labels)


def create_objective(cfg: Config, loss_fn: torch.nn.Module, transform: BatchTransform) -> Objective:
    """The per-batch training loss; adversarial variants perturb the unit-range batch first."""
    if cfg.train.adversarial:
        from medclf.robust.adversarial import create_adversarial_objective

        return create_adversarial_objective(cfg.train, loss_fn, transform)

    def objective(model: torch.nn.Module, x_unit: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return loss_fn(model(transform.normalise(x_unit)), y)

    return objective
