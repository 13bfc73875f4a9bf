"""Supervised contrastive pre-training (Khosla et al. 2020) as a stage before the supervised epochs.

`train.contrastive=supcon`: for `train.contrastive_epochs` epochs, each batch is augmented twice (the setup's
train transform with two generators), embedded by `model.embed`, projected by a small MLP head onto the unit
sphere, and trained with the SupCon loss at `train.contrastive_temperature`: images of the same class (and the
two views of one image) attract, the rest repel. The projection head is thrown away afterwards (as in the
paper); the classifier head is then trained by the normal epochs, either together with the whole network
(`contrastive_probe=finetune`) or alone on the frozen representation (`linear`).

The loss is pytorch-metric-learning's `SupConLoss` (the SupContrast reference code, L_out form: mean over
each anchor's positives of -log softmax over all other samples), which normalises the embeddings itself.
"""

from __future__ import annotations

import time

import pandas as pd
import torch
from torch import nn

from medclf.device import autocast, epoch_seed
from medclf.errors import ConfigError, MedclfError
from medclf.io import atomic_path
from medclf.models.checkpoint import unwrap_model
from medclf.runs.layout import RunDir

CONTRASTIVE_METHODS = ("supcon",)
PROBES = ("finetune", "linear")


def supcon_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SupCon loss of `B x D` embeddings (any norm) with integer `labels`; views of one image share a label."""
    from pytorch_metric_learning.losses import SupConLoss

    return SupConLoss(temperature=temperature)(embeddings.float(), labels)


class ProjectionHead(nn.Module):
    """D -> D -> `out_dim` MLP (SupCon's projection network); its output is normalised by the loss."""

    def __init__(self, in_dim: int, out_dim: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True), nn.Linear(in_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def check_contrastive_config(train_cfg) -> None:
    if train_cfg.contrastive not in CONTRASTIVE_METHODS:
        raise ConfigError(f"train.contrastive: unknown '{train_cfg.contrastive}' "
                          f"(valid: {', '.join(CONTRASTIVE_METHODS)})")
    if train_cfg.contrastive_probe not in PROBES:
        raise ConfigError(f"train.contrastive_probe: unknown '{train_cfg.contrastive_probe}' "
                          f"(valid: {', '.join(PROBES)})")
    if train_cfg.contrastive_temperature <= 0:
        raise ConfigError(f"train.contrastive_temperature must be positive, got {train_cfg.contrastive_temperature}")
    if train_cfg.contrastive_epochs < 0:
        raise ConfigError(f"train.contrastive_epochs must be >= 0, got {train_cfg.contrastive_epochs}")


def contrastive_pretrain(setup, progress: bool = True, resumed: bool = False) -> list[dict]:
    """Pre-train `setup.model`'s representation with SupCon, then prepare it for the chosen probe.

    Writes `contrastive_history.csv` (epoch, supcon_loss, seconds) into the run directory and returns its rows.
    Uses its own AdamW (the setup's optimizer and schedule belong to the supervised epochs that follow).
    `resumed=True` (a run resumed after pre-training) only re-applies the linear probe's freezing. One process
    only (build_setup refuses DDP with contrastive pre-training: the stage calls `embed`, which DDP does not wrap).
    """
    cfg = setup.cfg.train
    check_contrastive_config(cfg)
    model = setup.model
    classifier = unwrap_model(model)
    if resumed:
        if cfg.contrastive_probe == "linear":
            freeze_for_linear_probe(classifier)
        return []
    head = ProjectionHead(classifier.num_features).to(setup.device)
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = max(1, cfg.contrastive_epochs * setup.steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    history = []
    for epoch in range(cfg.contrastive_epochs):
        t0 = time.perf_counter()
        loss = _pretrain_epoch(setup, classifier, head, optimizer, scheduler, epoch, progress)
        history.append({"epoch": epoch + 1, "supcon_loss": loss, "seconds": time.perf_counter() - t0})
        if progress:
            print(f"supcon epoch {epoch + 1}: loss {loss:.4f} ({history[-1]['seconds']:.1f}s)")
    if history:
        setup.out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(setup.out_dir / RunDir.CONTRASTIVE_HISTORY) as tmp:
            pd.DataFrame(history).to_csv(tmp, index=False)
    if cfg.contrastive_probe == "linear":
        freeze_for_linear_probe(classifier)
    return history


def _pretrain_epoch(setup, classifier: nn.Module, head: nn.Module, optimizer, scheduler, epoch: int,
                    progress: bool) -> float:
    cfg = setup.cfg.train
    # distinct seeds from the supervised epochs (which use epoch_seed(seed, epoch) for epoch >= 0)
    seed = epoch_seed(cfg.seed, -1 - epoch)
    torch.manual_seed(seed)
    views = (torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1))
    classifier.train()
    head.train()
    total, count = 0.0, 0
    bar = setup.epoch_batches(10_000 + epoch, f"supcon {epoch + 1}/{cfg.contrastive_epochs}", progress)
    for step, (images, labels, _) in enumerate(bar):
        images, y = images.to(setup.device), labels.to(setup.device)
        x = torch.cat([setup.train_transform(images, g) for g in views])
        with autocast(setup.device, cfg.amp):
            z = head(classifier.embed(x))
        loss = supcon_loss(z, torch.cat([y, y]), cfg.contrastive_temperature)
        if not torch.isfinite(loss):
            raise MedclfError(f"contrastive pre-training diverged at epoch {epoch + 1} step {step}; lower train.lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_grad:
            torch.nn.utils.clip_grad_norm_(list(classifier.parameters()) + list(head.parameters()), cfg.clip_grad)
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(y)
        count += len(y)
        bar.set_postfix(loss=f"{total / count:.4f}")
    return total / max(1, count)


def _keep_eval_mode(module: nn.Module, args) -> None:
    # a frozen representation includes its BatchNorm statistics: normalise with the running averages and
    # never update them, even though the training loop puts the whole model in train mode
    module.training = False


def freeze_for_linear_probe(classifier: nn.Module) -> None:
    """Only the classifier head trains from now on; the backbone's weights and BN statistics stay fixed."""
    head = {id(p) for p in classifier.head_parameters()}
    for p in classifier.parameters():
        p.requires_grad_(id(p) in head)
    for m in classifier.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.register_forward_pre_hook(_keep_eval_mode)
