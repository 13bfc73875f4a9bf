"""Run a model (single or ensemble) over a cache split and produce the predictions table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from medclf.data.dataset import CacheDataset, make_loader
from medclf.data.transforms import make_transform
from medclf.engine.device import autocast
from medclf.engine.distributed import DistContext, gather_by_position, shard_positions
from medclf.models.contract import DataContract


@torch.no_grad()
def predict_dataset(
    model: torch.nn.Module,
    contract: DataContract,
    dataset: CacheDataset,
    device: torch.device,
    batch_size: int = 64,
    tta_flip: bool = False,
    progress: bool = False,
    desc: str = "predict",
) -> np.ndarray:
    """Class probabilities `N x K` (softmax), in dataset order. Ensembles may also expose `member_probs`."""
    transform = make_transform(contract, train=False)
    model.eval()
    out = np.zeros((len(dataset), contract.num_classes), dtype=np.float32)
    loader = make_loader(dataset, batch_size=batch_size, pin_memory=device.type == "cuda")
    for images, _, positions in tqdm(loader, desc=desc, disable=not progress, leave=False):
        x = transform(images.to(device, non_blocking=True))
        out[positions.numpy()] = predict_probs(model, x, device, tta_flip)
    return out


def predict_dataset_sharded(
    model: torch.nn.Module,
    contract: DataContract,
    dataset: CacheDataset,
    device: torch.device,
    dist: DistContext,
    batch_size: int = 64,
) -> np.ndarray:
    """`predict_dataset` split over the ranks: each predicts every `world_size`-th item, and every rank gets the
    full `N x K` array back in dataset order (so metrics equal a single-process evaluation of the same model)."""
    if not dist.enabled:
        return predict_dataset(model, contract, dataset, device, batch_size=batch_size)
    positions = shard_positions(len(dataset), dist)
    part = CacheDataset(dataset.cache, indices=dataset.indices[positions])
    probs = predict_dataset(model, contract, part, device, batch_size=batch_size)
    return gather_by_position(positions, probs, len(dataset), dist)


def predict_probs(model: torch.nn.Module, x: torch.Tensor, device: torch.device, tta_flip: bool = False) -> np.ndarray:
    """Softmax probabilities for one normalised batch (optionally averaged with the mirrored image)."""
    with autocast(device, enabled=True):
        probs = torch.softmax(model(x).float(), dim=1)
        if tta_flip:
            probs = (probs + torch.softmax(model(x.flip(-1)).float(), dim=1)) / 2
    return probs.cpu().numpy()


def predictions_table(
    dataset: CacheDataset, probs: np.ndarray, contract: DataContract, split: str, model_name: str
) -> pd.DataFrame:
    """The predictions table of DESIGN.md: `id,label,prob,split,model` (+ `prob_<class>` when K > 2)."""
    table = pd.DataFrame(
        {
            "id": dataset.ids,
            "label": dataset.labels,
            "prob": probs[:, contract.positive_index],
            "split": split,
            "model": model_name,
        }
    )
    if contract.num_classes > 2:
        for k, name in enumerate(contract.label_names):
            table[f"prob_{name}"] = probs[:, k]
    return table
