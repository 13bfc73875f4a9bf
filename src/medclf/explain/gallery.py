"""The explanation gallery: a few true/false positives/negatives with every method's map and the boxes.

Per outcome, the most confident cases are shown (TP and FP: highest probability first; FN and TN: lowest
first), so the gallery shows what the model is surest about, right or wrong. One PNG per outcome, a row per
image: the radiograph with its boxes, then one overlay per method (captioned with hit/miss when boxed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medclf.data.cache import Cache
from medclf.explain.overlay import render, save_png, tile
from medclf.explain.registry import compute_maps, resize_maps
from medclf.explain.scores import pointing_hit
from medclf.runs import Run, model_input
from medclf.tasks import task_for

OUTCOMES = {"tp": "true positives", "fp": "false positives", "fn": "false negatives", "tn": "true negatives"}
PANEL_SIDE = 192


def pick_outcomes(positive: np.ndarray, probs: np.ndarray, threshold: float, k: int) -> dict[str, np.ndarray]:
    """Positions (into `probs`) of up to `k` most confident images per outcome at `threshold`."""
    called = probs >= threshold
    picks = {}
    for name, mask, descending in (("tp", positive & called, True), ("fp", ~positive & called, True),
                                   ("fn", positive & ~called, False), ("tn", ~positive & ~called, False)):
        pos = np.flatnonzero(mask)
        order = np.argsort(-probs[pos] if descending else probs[pos], kind="stable")
        picks[name] = pos[order[:k]]
    return picks


def write_gallery(run: Run, cache: Cache, rows: np.ndarray, probs: np.ndarray, methods: list[str],
                  out_dir: Path, device: torch.device, k: int = 3) -> dict:
    """Write `out_dir/gallery_<outcome>.png`; returns `{outcome: {"png": name, "images": [...]}}` (empty
    outcomes are left out). `rows` are cache rows, `probs` their positive-class probabilities."""
    if k <= 0:
        return {}
    labels = cache.manifest["label"].to_numpy()[rows]
    task, explained = task_for(run.contract), run.contract.positive_index
    positive = task.positive(labels, explained)  # multilabel: the images holding the explained finding
    out: dict = {}
    for outcome, picked in pick_outcomes(positive, probs, task.threshold_of(explained), k).items():
        if picked.size == 0:
            continue
        chosen = rows[picked]
        panel_rows = _panels(run, cache, chosen, probs[picked], methods, device)
        name = f"gallery_{outcome}.png"
        save_png(out_dir / name, tile(panel_rows))
        out[outcome] = {"png": name, "images": [
            {"id": str(cache.manifest["id"].iat[r]), "split": str(cache.manifest["split"].iat[r]),
             "label": int(labels[p]), "prob": float(probs[p]), "boxes": cache.boxes(int(r))}
            for r, p in zip(chosen, picked)]}
    return out


def _panels(run: Run, cache: Cache, chosen: np.ndarray, probs: np.ndarray, methods: list[str],
            device: torch.device) -> list[list[np.ndarray]]:
    images = np.asarray(cache.images[chosen])
    x = model_input(run.contract, torch.from_numpy(images).to(device))
    maps = {m: resize_maps(compute_maps(run.model, x, m, run.contract.positive_index), cache.size).numpy()
            for m in methods}
    rows = []
    for i, r in enumerate(chosen):
        boxes = cache.boxes(int(r))
        ident = str(cache.manifest["id"].iat[r])
        row = [render(images[i], None, f"{ident[:16]} p={probs[i]:.2f}", boxes, side=PANEL_SIDE)]
        for m in methods:
            verdict = (" hit" if pointing_hit(maps[m][i], boxes) else " miss") if boxes else ""
            row.append(render(images[i], maps[m][i], f"{m}{verdict}", boxes, side=PANEL_SIDE))
        rows.append(row)
    return rows
