"""`medclf explain RUN --data CACHE --split test --score`: how well each method's maps point at the boxes.

For every positive image with boxes in the chosen split(s) -- one holding the explained class, the run's
positive class (`Task.positive`: for a multilabel run, an image holding that finding, whatever else it holds) --
each method's map is computed at the model's
input size (where ROAD perturbs the input), then resized to the cache size, where the boxes live, for the
pointing game and the energy in box (`medclf.explain.scores`). Writes, in the run directory or `out`:
`explain_scores.json`, `explain_scores.md` (the table), `explain_scores_per_image.csv`, and the gallery
PNGs under `explain/` that the report embeds.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from medclf.data.cache import Cache
from medclf.data.dataset import CacheDataset
from medclf.data.splits import SPLITS
from medclf.device import pick_device
from medclf.errors import MedclfError
from medclf.explain.gallery import write_gallery
from medclf.explain.registry import compute_maps, parse_methods, resize_maps
from medclf.explain.scores import box_area_fraction, energy_in_box, is_flat, mean_ci, pointing_hit, road_scores
from medclf.io import atomic_path, write_json, write_text
from medclf.runs import Predictor, Probabilities, Run, RunDir, model_input, open_run_and_cache
from medclf.tasks import task_for

ALL_SPLITS = "all"


def select_rows(cache: Cache, split: str) -> np.ndarray:
    """Cache rows of one split, or of every split for 'all'."""
    if split == ALL_SPLITS:
        return cache.indices(None)
    if split not in SPLITS:
        raise MedclfError(f"--split must be one of {', '.join(SPLITS)} or {ALL_SPLITS}, not '{split}'")
    return cache.indices(split)


def score_run(run_dir: str | Path, data: str | Path, split: str = "test", methods: str | Sequence[str] | None = None,
              out: str | Path | None = None, n_boot: int = 1000, faithfulness: bool = True, gallery: int = 3,
              batch_size: int = 16, max_images: int | None = None, device: str = "auto", seed: int = 0,
              progress: bool = True) -> dict:
    """Score each method against the boxes; returns (and writes) the explain_scores.json dict."""
    dev = pick_device(device)
    run, cache = open_run_and_cache(run_dir, data, dev)  # refuses a cache whose labels differ from the run's
    names = parse_methods(",".join(methods) if isinstance(methods, (list, tuple)) else methods, run.model)
    rows = select_rows(cache, split)
    predictor = run.predictor()
    probs = predictor.predict_dataset(CacheDataset(cache, indices=rows)).probs[:, run.contract.positive_index]
    boxed = _positives_with_boxes(run, cache, rows, split, max_images)
    prob_of = dict(zip(rows.tolist(), probs.tolist()))
    per_image, summary = [], {}
    for method in names:
        started = time.perf_counter()
        records = _score_method(run, predictor, cache, boxed, method, faithfulness, batch_size, seed, progress)
        for r in records:
            r["prob"] = prob_of[r.pop("row")]
        per_image.extend(records)
        summary[method] = _summarise(records, n_boot, seed, faithfulness, time.perf_counter() - started)
    out_dir = Path(out) if out is not None else Path(run_dir)
    shown = write_gallery(run, cache, rows, probs, names, out_dir / RunDir.EXPLAIN, dev, gallery)
    result = _result(run, cache, split, boxed, summary, per_image, shown, n_boot, seed, faithfulness)
    _write_outputs(out_dir, result, per_image)
    return result


def _positives_with_boxes(run: Run, cache: Cache, rows: np.ndarray, split: str,
                          max_images: int | None) -> np.ndarray:
    labels = cache.manifest["label"].to_numpy()[rows]
    has_box = np.array([bool(cache.boxes(int(r))) for r in rows], dtype=bool)
    holds = task_for(run.contract).positive(labels, run.contract.positive_index)  # the explained class
    boxed = rows[holds & has_box]
    if boxed.size == 0:
        raise MedclfError(f"{cache.path}: no positive image with boxes in split '{split}' "
                          f"(the manifest's boxes column is empty there); nothing to score")
    return boxed[:max_images] if max_images else boxed


def _score_method(run: Run, predictor: Predictor, cache: Cache, boxed: np.ndarray, method: str, faithfulness: bool,
                  batch_size: int, seed: int, progress: bool) -> list[dict]:
    pos = run.contract.positive_index
    probabilities = Probabilities(predictor)  # ROAD reads the run's own probabilities, TTA and activation included
    records = []
    with torch.random.fork_rng(devices=[]):  # ROAD's imputation noise: same draws on every run
        torch.manual_seed(seed)
        for start in tqdm(range(0, len(boxed), batch_size), desc=f"score {method}", disable=not progress,
                          leave=False):
            chunk = boxed[start:start + batch_size]
            images = torch.from_numpy(np.asarray(cache.images[chunk])).to(predictor.device)
            maps = compute_maps(run.model, model_input(run.contract, images), method, pos)  # at the model's size
            road = (road_scores(probabilities, predictor.unit(images), maps, pos) if faithfulness
                    else [None] * len(chunk))
            at_cache = resize_maps(maps, cache.size).numpy()  # where the boxes live
            for r, heat, f in zip(chunk, at_cache, road):
                boxes = cache.boxes(int(r))
                records.append({"row": int(r), "id": str(cache.manifest["id"].iat[r]),
                                "split": str(cache.manifest["split"].iat[r]), "method": method,
                                "n_boxes": len(boxes), "hit": bool(pointing_hit(heat, boxes)),
                                "energy_in_box": energy_in_box(heat, boxes),
                                "box_area_fraction": box_area_fraction(boxes, heat.shape),
                                "road": None if f is None else float(f), "flat": is_flat(heat)})
    return records


def _summarise(records: list[dict], n_boot: int, seed: int, faithfulness: bool, seconds: float) -> dict:
    out = {
        "n": len(records),
        "pointing_game": mean_ci([float(r["hit"]) for r in records], n_boot, seed),
        "energy_in_box": mean_ci([r["energy_in_box"] for r in records], n_boot, seed),
        "n_flat": int(sum(r["flat"] for r in records)),
        "seconds": round(seconds, 2),
    }
    out["road"] = mean_ci([r["road"] for r in records], n_boot, seed) if faithfulness else None
    return out


def _result(run: Run, cache: Cache, split: str, boxed: np.ndarray, summary: dict, per_image: list[dict],
            gallery: dict, n_boot: int, seed: int, faithfulness: bool) -> dict:
    first = [r for r in per_image if r["method"] == next(iter(summary))]
    return {
        "run": str(run.run_dir), "model": run.contract.model_name, "cache": str(cache.path), "split": split,
        "class": run.contract.label_names[run.contract.positive_index],
        "input_size": run.contract.input_size, "cache_size": cache.size,
        "n_images": int(boxed.size), "n_boxes": int(sum(r["n_boxes"] for r in first)),
        "chance": mean_ci([r["box_area_fraction"] for r in first], n_boot, seed),
        "faithfulness": "ROAD combined (grad-cam), percentiles 10..90" if faithfulness else None,
        "n_boot": n_boot, "seed": seed, "methods": summary, "gallery": gallery,
    }


def _fmt(stat: dict | None) -> str:
    if not stat or stat.get("mean") is None:
        return "—"
    lo, hi = stat["ci"]
    return f"{stat['mean']:.3f} [{lo:.3f}, {hi:.3f}]"


def markdown_table(result: dict) -> str:
    """The scores as a Markdown table, with the chance level and what the columns mean."""
    lines = [f"# Explanation scores: {result['model']} on {result['cache']} (split {result['split']})", "",
             f"{result['n_images']} positive images with {result['n_boxes']} boxes; maps at {result['input_size']} px "
             f"resized to the cache's {result['cache_size']} px. Mean [95% bootstrap CI over images].", "",
             "| method | n | pointing game | energy in box | ROAD (faithfulness) | flat maps | seconds |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, s in result["methods"].items():
        lines.append(f"| {name} | {s['n']} | {_fmt(s['pointing_game'])} | {_fmt(s['energy_in_box'])} | "
                     f"{_fmt(s['road'])} | {s['n_flat']} | {s['seconds']:.1f} |")
    lines += ["", f"Chance level (share of the image inside the boxes; a map ignoring the image scores this on "
              f"both box scores): {_fmt(result['chance'])}.",
              "Pointing game: the map's maximum lies in a box. Energy in box: share of the map's mass inside the "
              "boxes. ROAD: (LeRF - MoRF) / 2 change in probability; higher is more faithful.", ""]
    return "\n".join(lines)


def _write_outputs(out_dir: Path, result: dict, per_image: list[dict]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / RunDir.EXPLAIN_SCORES, result)
    write_text(out_dir / RunDir.EXPLAIN_SCORES_TABLE, markdown_table(result))
    with atomic_path(out_dir / RunDir.EXPLAIN_PER_IMAGE) as tmp:
        pd.DataFrame(per_image).to_csv(tmp, index=False)
