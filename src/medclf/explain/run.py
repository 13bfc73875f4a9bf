"""`medclf explain RUN INPUT... --method M`: one overlay PNG per image (and a feature-map grid for featuremaps).

Images are read exactly as `predict` reads them (`load_image` at the run's cache size), brought to the model's
input size by the model's own transform, explained there, and drawn back on the radiograph at cache size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from medclf.device import pick_device
from medclf.engine.predict import expand_inputs
from medclf.explain.featuremaps import feature_grid
from medclf.explain.overlay import render, save_png
from medclf.explain.registry import (
    check_applies,
    compute_class_maps,
    create_explainer,
    member_input,
    members_of,
    resize_maps,
)
from medclf.explain.scores import is_flat
from medclf.explain.targets import map_targets, target_index
from medclf.io import atomic_path
from medclf.runs import Predictor, Run, RunDir, model_input, open_run, read_images
from medclf.tasks import task_for

# Written under the caption of an overlay whose map is flat: without it a blank overlay looks like a quiet one.
FLAT_NOTE = "flat map: no region stands out"
# Said on the terminal when maps come out flat, with docs/explain.md's own advice ("Reading the numbers").
FLAT_ADVICE = ("the model's last feature map is too coarse at a small input size (a ResNet at 64 px: 2 x 2 cells); "
               "train at >= 128 px when localisation matters (docs/explain.md)")
COLUMNS = ["path", "method", "prob", "flat", "png", "error"]


def slug(method: str) -> str:
    """A file-name-safe method name (gradcam++ -> gradcampp)."""
    return method.replace("+", "p")


def caption(run: Run, prob: float, flat: bool = False, target: int | None = None) -> str:
    """'pneumonia p=0.873' (the explained class, default the positive one, and its probability; the positive class
    is marked + at or above the threshold), and FLAT_NOTE on a second line when the map is flat."""
    c = run.contract
    target = c.positive_index if target is None else target
    flag = task_for(c).caption_mark(target, prob)
    return f"{c.label_names[target]} p={prob:.3f}{flag}" + (f"\n{FLAT_NOTE}" if flat else "")


def explain_batch(run: Run, images: np.ndarray, method: str = "gradcam", device: torch.device | str | None = None,
                  predictor: Predictor | None = None, target: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 `B x S x S` -> (maps `B x S x S` in [0, 1] at the images' size, probabilities `B` of the drawn class,
    as the run's Predictor gives them). The class: `target` (a label name), else the task's default
    (`map_targets`: the positive class of a binary run). `device` defaults to the one the run was opened on."""
    maps, probs, _ = explain_targets(run, images, method, device, predictor, target)
    return maps, probs


def explain_targets(run: Run, images: np.ndarray, method: str = "gradcam", device: torch.device | str | None = None,
                    predictor: Predictor | None = None,
                    target: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`explain_batch` plus the index of the class drawn for each image."""
    device = torch.device(device) if device is not None else next(run.model.parameters()).device
    images = np.array(images, dtype=np.uint8)  # a copy: torch warns on a read-only memmap slice
    c = run.contract
    all_probs = (predictor or run.predictor()).predict_arrays(images).probs
    targets = map_targets(task_for(c), all_probs, target)
    maps = compute_class_maps(run.model, model_input(c, torch.from_numpy(images).to(device)), method, targets)
    probs = all_probs[np.arange(len(images)), targets]
    return resize_maps(maps, images.shape[-1]).clamp_(0.0, 1.0).numpy(), probs, targets


def explain_files(run_dir: str | Path, inputs: Iterable[str | Path], method: str = "gradcam",
                  out: str | Path | None = None, batch_size: int = 8, device: str = "auto",
                  progress: bool = True, target: str | None = None) -> pd.DataFrame:
    """Write `<out>/<stem>_<method>.png` per readable image (+ `<stem>_featuremaps_grid.png` for featuremaps)
    and `<out>/explanations.csv` (`path,method,prob,flat,png,error`; `flat`: the map has no peak, said on the
    picture too; a K-class or multilabel run adds `target`, the class drawn, whose probability `prob` is);
    returns that table. `out` defaults to RUN/explain. `target`: the class to draw (`map_targets`)."""
    dev = pick_device(device)
    run = open_run(run_dir, dev)
    if target is not None:
        target_index(target, run.contract.label_names)  # an unknown name fails before any work
    explainer = create_explainer(method)
    check_applies(explainer, run.model)
    files = expand_inputs(inputs)
    out_dir = Path(out) if out is not None else RunDir(run_dir) / RunDir.EXPLAIN
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for start in tqdm(range(0, len(files), batch_size), desc=f"explain {method}", disable=not progress, leave=False):
        rows.extend(_explain_chunk(run, files[start:start + batch_size], method, out_dir, dev, target))
    table = pd.DataFrame(rows, columns=task_for(run.contract).explain_columns(COLUMNS))
    with atomic_path(out_dir / RunDir.EXPLANATIONS) as tmp:
        table.to_csv(tmp, index=False)
    return table


def _explain_chunk(run: Run, files: list[Path], method: str, out_dir: Path, dev: torch.device,
                   target: str | None) -> list[dict]:
    batch, good, failed = read_images(files, run.load_image)
    rows = [{"path": str(path), "method": method, "prob": None, "flat": None, "png": "", "error": err, "target": ""}
            for path, err in failed]
    if batch is None:
        return rows
    maps, probs, targets = explain_targets(run, batch, method, dev, target=target)
    names = _unique_stems(good)
    for path, name, image, heat, prob, k in zip(good, names, batch, maps, probs, targets):
        flat = is_flat(heat)
        picture = render(image, heat, caption(run, float(prob), flat, int(k)))
        png = save_png(out_dir / f"{name}_{slug(method)}.png", picture)
        if method == "featuremaps":
            _write_grids(run, image, out_dir / f"{name}_featuremaps_grid.png", dev)
        rows.append({"path": str(path), "method": method, "prob": float(prob), "flat": flat, "png": str(png),
                     "error": "", "target": run.contract.label_names[int(k)]})
    return rows


def _unique_stems(paths: list[Path]) -> list[str]:
    """File stems, with the parent folder prepended when two inputs share a stem (no overwritten PNGs)."""
    stems = [p.stem for p in paths]
    return [f"{p.parent.name}_{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in paths]


def _write_grids(run: Run, image: np.ndarray, path: Path, dev: torch.device) -> None:
    """The strongest channels per stage for one image; one grid per ensemble member (`..._member<i>.png`)."""
    x = model_input(run.contract, torch.from_numpy(image[None].copy()).to(dev))
    members = members_of(run.model)
    for i, member in enumerate(members):
        target = path if len(members) == 1 else path.with_name(f"{path.stem}_member{i}.png")
        save_png(target, feature_grid(member, member_input(run.model, i, x), image))


def flat_maps_note(table: pd.DataFrame) -> str | None:
    """One line when some of the maps `explain_files` drew are flat (a blank overlay must not pass for a quiet
    one), else None."""
    drawn = table[table["error"] == ""]
    flat = int(drawn["flat"].astype(bool).sum())
    if not flat:
        return None
    return f"note: {flat} of {len(drawn)} maps are flat (no region stands out): {FLAT_ADVICE}"
