"""`medclf ood`: fit the OOD detector on a run's training split, score in-distribution vs OOD images, store it.

Steps: (1) features and logits of the training split (at most `fit_max` images, seeded) -> Mahalanobis class
means and shared precision; (2) the in-distribution evaluation split and the OOD set are scored by every
registered score -> AUROC and FPR at 95% TPR, written to `RUN/ood.json` (one entry per OOD set, merged with
earlier runs of the command) and `RUN/ood.csv`; (3) the chosen score's threshold accepting `accept_rate` of the
validation split is stored with the detector in `best.pt`'s `contract.ood` (re-saved atomically).

The OOD set is a prepared cache (all its rows, whatever their split) or a synthetic set made on the fly:
`noise` (uniform and smoothed noise) or `natural` (grey crops of scikit-learn's two sample photographs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from medclf.data.cache import Cache
from medclf.data.dataset import CacheDataset, make_loader
from medclf.engine.device import pick_device
from medclf.engine.evaluate import open_run_and_cache
from medclf.errors import DataError, MedclfError
from medclf.io import atomic_path, read_json, write_json
from medclf.robust.ood import (OOD_SCORES, Outputs, array_batches, detection_metrics, fit_mahalanobis,
                               get_score, make_detector, model_outputs)

SYNTHETIC_SETS = ("noise", "natural")


def ood_run(run_dir: str | Path, ood: str | Path, split: str = "test", data: str | Path | None = None,
            store: bool = True, store_score: str = "mahalanobis", accept_rate: float = 0.95,
            fit_max: int | None = 5000, batch_size: int = 64, device: str = "auto", seed: int = 0,
            progress: bool = True) -> dict:
    """Returns the ood.json entry for this OOD set: `{name, n_in, n_out, split, scores: {name: {auroc, fpr95}}}`."""
    run_dir = Path(run_dir)
    if not 0.0 < accept_rate < 1.0:
        raise MedclfError(f"--accept-rate must be in (0, 1), got {accept_rate}")
    get_score(store_score)
    dev = pick_device(device)
    run, cache = open_run_and_cache(run_dir, data, dev)

    def outputs(dataset_or_images, desc: str) -> Outputs:
        if isinstance(dataset_or_images, np.ndarray):
            batches = array_batches(dataset_or_images, batch_size)
            total = -(-len(dataset_or_images) // batch_size)
        else:
            loader = make_loader(dataset_or_images, batch_size=batch_size)
            batches, total = (imgs for imgs, _, _ in loader), len(loader)
        return model_outputs(run.model, run.contract, tqdm(batches, total=total, desc=desc, disable=not progress,
                                                           leave=False), dev)

    eval_set = CacheDataset(cache, split=split)
    if len(eval_set) == 0:
        raise DataError(f"{cache.path}: split '{split}' is empty")
    name, ood_images = load_ood_images(ood, cache.size, n=len(eval_set), seed=seed)
    train_set = _subset(CacheDataset(cache, split="train"), fit_max, seed)
    if len(train_set) < 2:
        raise DataError(f"{cache.path}: the training split has {len(train_set)} images; the detector needs >= 2")
    fit_out = outputs(train_set, "ood: fit on train")
    maha = fit_mahalanobis(fit_out.features, train_set.labels) if fit_out.features is not None else None
    in_out = outputs(eval_set, f"ood: {split}")
    out_out = outputs(ood_images, f"ood: {name}")

    entry = {"name": name, "split": split, "data": str(cache.path), "n_in": len(eval_set),
             "n_out": int(len(ood_images)), "scores": {}, "skipped": {}}
    for score_name, fn in OOD_SCORES.items():
        try:
            metrics = detection_metrics(fn(in_out, maha), fn(out_out, maha))
        except MedclfError as err:  # a score the model cannot give (energy of an ensemble) is listed, not fatal
            entry["skipped"][score_name] = str(err)
            continue
        entry["scores"][score_name] = {"auroc": metrics["auroc"], "fpr95": metrics["fpr95"]}
    if store:
        entry["stored"] = store_detector(run, cache, store_score, accept_rate, maha, outputs, len(train_set))
    _write(run_dir, entry)
    return entry


def store_detector(run, cache: Cache, score: str, accept_rate: float, maha: dict | None, outputs,
                   n_fit: int) -> dict:
    """Threshold on validation, then best.pt re-saved with `contract.ood`; returns what was stored."""
    from medclf.models.checkpoint import load_checkpoint, save_checkpoint

    best = run.run_dir / "best.pt"
    if not best.is_file():  # an ensemble run: the members' checkpoints each describe one member only
        return {"saved": False, "reason": f"{best} not found (ensemble runs keep no single checkpoint)"}
    val_set = CacheDataset(cache, split="val")
    if len(val_set) == 0:
        raise DataError(f"{cache.path}: no validation split to set the OOD threshold on")
    val_scores = get_score(score)(outputs(val_set, "ood: threshold on val"), maha)
    threshold = float(np.quantile(val_scores, accept_rate, method="higher"))
    fitted_on = {"cache_hash": str(cache.meta.get("content_hash", "")), "fit_split": "train", "n_fit": n_fit,
                 "threshold_split": "val", "n_threshold": len(val_set)}
    detector = make_detector(score, threshold, accept_rate, maha if score == "mahalanobis" else None, fitted_on)
    model, contract, payload = load_checkpoint(best)
    contract.ood = detector
    save_checkpoint(best, model, contract, payload.get("config") or {}, payload.get("extra"))
    run.contract.ood = detector
    accepted = float(np.mean(val_scores <= threshold))
    return {"saved": True, "score": score, "threshold": threshold, "val_accepted": accepted}


def load_ood_images(ood: str | Path, size: int, n: int, seed: int = 0) -> tuple[str, np.ndarray]:
    """(name, uint8 N x size x size): a prepared cache (all rows, resized to `size`) or a synthetic set."""
    text = str(ood)
    if text in SYNTHETIC_SETS and not Path(text).exists():
        return text, synthetic_ood_images(text, n=min(max(n, 16), 1000), size=size, seed=seed)
    path = Path(ood)
    if not (path / "cache.json").is_file():
        raise MedclfError(f"--ood {ood}: not a prepared cache (no cache.json) nor one of {', '.join(SYNTHETIC_SETS)}")
    cache = Cache.open(path)
    images = np.asarray(cache.images)
    if cache.size != size:
        images = _resize(images, size)
    return path.name, images


def synthetic_ood_images(kind: str, n: int, size: int, seed: int = 0) -> np.ndarray:
    """`noise`: half uniform grey noise, half Gaussian-smoothed noise (blob-like textures) stretched to 0-255;
    `natural`: random square grey crops (10-90% of the short side) of scikit-learn's two sample photographs."""
    rng = np.random.default_rng(seed)
    if kind == "noise":
        from scipy.ndimage import gaussian_filter

        out = rng.integers(0, 256, size=(n, size, size)).astype(np.uint8)
        for i in range(n // 2, n):
            smooth = gaussian_filter(rng.standard_normal((size, size)), sigma=rng.uniform(1.0, size / 8))
            out[i] = _stretch(smooth)
        return out
    if kind == "natural":
        from PIL import Image
        from sklearn.datasets import load_sample_images

        photos = [np.asarray(Image.fromarray(p).convert("L")) for p in load_sample_images().images]
        out = np.empty((n, size, size), dtype=np.uint8)
        for i in range(n):
            photo = photos[i % len(photos)]
            side = int(rng.uniform(0.1, 0.9) * min(photo.shape))
            y, x = rng.integers(0, photo.shape[0] - side + 1), rng.integers(0, photo.shape[1] - side + 1)
            crop = Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size), Image.BILINEAR)
            out[i] = np.asarray(crop)
        return out
    raise MedclfError(f"unknown synthetic OOD set '{kind}' (valid: {', '.join(SYNTHETIC_SETS)})")


def _stretch(a: np.ndarray) -> np.ndarray:
    lo, hi = a.min(), a.max()
    return np.round((a - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8)


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(images)).float().unsqueeze(1)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.round().clamp(0, 255).squeeze(1).to(torch.uint8).numpy()


def _subset(dataset: CacheDataset, limit: int | None, seed: int) -> CacheDataset:
    if limit is None or len(dataset) <= limit:
        return dataset
    pick = np.sort(np.random.default_rng(seed).choice(len(dataset), size=limit, replace=False))
    return CacheDataset(dataset.cache, indices=dataset.indices[pick])


def _write(run_dir: Path, entry: dict) -> None:
    """ood.json keeps one entry per (OOD set, split); ood.csv is the same as a flat table."""
    path = run_dir / "ood.json"
    entries = read_json(path).get("entries", []) if path.is_file() else []
    entries = [e for e in entries if (e.get("name"), e.get("split")) != (entry["name"], entry["split"])] + [entry]
    write_json(path, {"entries": entries})
    with atomic_path(run_dir / "ood.csv") as tmp:
        ood_table(entries).to_csv(tmp, index=False)


def ood_table(entries: list[dict]) -> pd.DataFrame:
    rows = [{"ood": e["name"], "split": e["split"], "n_in": e["n_in"], "n_out": e["n_out"], "score": s,
             "auroc": m["auroc"], "fpr95": m["fpr95"]} for e in entries for s, m in e["scores"].items()]
    return pd.DataFrame(rows, columns=["ood", "split", "n_in", "n_out", "score", "auroc", "fpr95"])
