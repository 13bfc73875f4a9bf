"""`medclf ood`: measure how well OOD scores tell a run's images from another set, and (re)fit its detector.

Steps: (1) the run's detector is refitted on the run's own training split (its cache, at most `fit_max`
images, seeded; `medclf train` fitted one already) with the threshold accepting `accept_rate` of its validation
split, and stored in `best.pt`'s `contract.ood` (re-saved atomically); (2) an in-distribution evaluation split
(of the run's cache, or of any cache given with `data`) and the OOD set are scored by every registered score
-> AUROC and FPR at 95% TPR, written to `RUN/ood.json` (one entry per OOD set, merged with earlier runs of the
command) and `RUN/ood.csv`.

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
from medclf.data.dataset import CacheDataset, make_loader, seeded_subset
from medclf.data.samplers import sampling_classes
from medclf.device import pick_device
from medclf.errors import DataError, MedclfError
from medclf.evaluation.ood import OOD_SCORES, Outputs, detection_metrics, fit_mahalanobis
from medclf.io import atomic_path, read_json, write_json
from medclf.runs import Predictor, Run, RunDir, open_run_and_cache
from medclf.runs.ood import fit_detector, model_outputs

SYNTHETIC_SETS = ("noise", "natural")


def ood_run(run_dir: str | Path, ood: str | Path, split: str = "test", data: str | Path | None = None,
            store: bool = True, accept_rate: float = 0.95, fit_max: int | None = 5000, batch_size: int = 64,
            device: str = "auto", seed: int = 0, progress: bool = True) -> dict:
    """Returns the ood.json entry for this OOD set: `{name, n_in, n_out, split, scores: {name: {auroc, fpr95}}}`."""
    if not 0.0 < accept_rate < 1.0:
        raise MedclfError(f"--accept-rate must be in (0, 1), got {accept_rate}")
    dev = pick_device(device)
    run, own = open_run_and_cache(run_dir, None, dev)
    cache = own if data is None else open_run_and_cache(run_dir, data, dev)[1]
    predictor = run.predictor()

    def outputs(source, desc: str) -> Outputs:
        if isinstance(source, np.ndarray):
            batches = (torch.from_numpy(np.array(source[i:i + batch_size])) for i in range(0, len(source), batch_size))
            total = -(-len(source) // batch_size)
        else:
            loader = make_loader(source, batch_size=batch_size)
            batches, total = (imgs for imgs, _, _ in loader), len(loader)
        return model_outputs(predictor, tqdm(batches, total=total, desc=desc, disable=not progress, leave=False))

    eval_set = CacheDataset(cache, split=split)
    if len(eval_set) == 0:
        raise DataError(f"{cache.path}: split '{split}' is empty")
    name, ood_images = load_ood_images(ood, cache.size, n=len(eval_set), seed=seed)
    train_set = seeded_subset(CacheDataset(own, split="train"), fit_max, seed)
    if len(train_set) < 2:
        raise DataError(f"{own.path}: the training split has {len(train_set)} images; the detector needs >= 2")
    fit_out = outputs(train_set, "ood: fit on train")
    maha = fit_mahalanobis(fit_out.features, sampling_classes(train_set)) if fit_out.features is not None else None
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
        entry["stored"] = store_detector(run, own, predictor, accept_rate, fit_max, seed, batch_size, progress)
    _write(run.dir, entry)
    return entry


def store_detector(run: Run, cache: Cache, predictor: Predictor, accept_rate: float, fit_max: int | None, seed: int,
                   batch_size: int, progress: bool) -> dict:
    """The detector refitted on the run's training split (threshold on its val split), then best.pt re-saved
    with it as `contract.ood`; returns what was stored."""
    from medclf.models.checkpoint import load_checkpoint, save_checkpoint

    if run.is_ensemble:  # the members' checkpoints each hold their own detector
        return {"saved": False, "reason": f"{run.run_dir} is an ensemble: each member keeps its own detector "
                                          "(fitted when it was trained)"}
    detector = fit_detector(predictor, CacheDataset(cache, split="train"), CacheDataset(cache, split="val"),
                            accept_rate=accept_rate, fit_max=fit_max, seed=seed, batch_size=batch_size,
                            progress=progress)
    model, contract, payload = load_checkpoint(run.dir.best)
    contract.ood = detector
    save_checkpoint(run.dir.best, model, contract, payload.get("config") or {}, payload.get("extra"))
    run.contract.ood = detector
    return {"saved": True, "score": detector["score"], "threshold": detector["threshold"],
            "val_accepted": detector["fitted_on"]["val_accepted"]}


def load_ood_images(ood: str | Path, size: int, n: int, seed: int = 0) -> tuple[str, np.ndarray]:
    """(name, uint8 N x size x size): a prepared cache (all rows, resized to `size`) or a synthetic set."""
    text = str(ood)
    if text in SYNTHETIC_SETS and not Path(text).exists():
        return text, synthetic_ood_images(text, n=min(max(n, 16), 1000), size=size, seed=seed)
    path = Path(ood)
    if not path.is_dir():
        raise MedclfError(f"--ood {ood}: not a prepared cache (no such folder) nor one of {', '.join(SYNTHETIC_SETS)}")
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


def _write(rd: RunDir, entry: dict) -> None:
    """ood.json keeps one entry per (OOD set, split); ood.csv is the same as a flat table."""
    path = rd / RunDir.OOD
    entries = read_json(path).get("entries", []) if path.is_file() else []
    entries = [e for e in entries if (e.get("name"), e.get("split")) != (entry["name"], entry["split"])] + [entry]
    write_json(path, {"entries": entries})
    with atomic_path(rd / RunDir.OOD_TABLE) as tmp:
        ood_table(entries).to_csv(tmp, index=False)


def ood_table(entries: list[dict]) -> pd.DataFrame:
    rows = [{"ood": e["name"], "split": e["split"], "n_in": e["n_in"], "n_out": e["n_out"], "score": s,
             "auroc": m["auroc"], "fpr95": m["fpr95"]} for e in entries for s, m in e["scores"].items()]
    return pd.DataFrame(rows, columns=["ood", "split", "n_in", "n_out", "score", "auroc", "fpr95"])
