"""`medclf attack`: metrics of a run under FGSM/PGD at several eps, on one split of a cache.

For each eps (eps = 0, the clean images, is always included) the split is attacked batch by batch and scored
with `binary_metrics` at the run's stored operating threshold (the clean operating point: the threshold is not
re-chosen under attack). A K-class run (K > 2) is scored the same way on its positive class against the rest, and
each row also gets `class_accuracy` (the most probable class is the true one) and `macro_roc_auc` (one-vs-rest,
`medclf.evaluation.macro_auc`), the figures of all K classes. Outputs in the run directory:
- `robustness.json`: one entry per (method, steps, split, cache), merged with earlier runs of the command;
- `robustness.csv`: the same as a flat table; `robustness.png`: accuracy, F1 and AUC against eps;
- `attack_examples_<method>.png`: a few images at the largest eps (clean, perturbation amplified, adversarial).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from medclf.data.dataset import CacheDataset, make_loader, seeded_subset
from medclf.device import pick_device
from medclf.errors import DataError, MedclfError
from medclf.io import atomic_path, read_json, write_json
from medclf.robust.attacks import get_attack
from medclf.runs import LogProbs, Predictor, RunDir, open_run_and_cache
from medclf.tasks import ATTACK_ROW_KEYS, Task

ROW_KEYS = ATTACK_ROW_KEYS
CLASS_KEYS = ("class_accuracy", "macro_roc_auc")


def attack_run(run_dir: str | Path, method: str = "pgd",
               eps: list[float] | tuple[float, ...] = (0.5 / 255, 1 / 255, 2 / 255),
               steps: int = 10, split: str = "test", data: str | Path | None = None, batch_size: int = 32,
               max_images: int | None = None, n_boot: int = 1000, n_examples: int = 4, device: str = "auto",
               seed: int = 0, progress: bool = True) -> dict:
    """Attack `split` at every eps; returns the robustness.json entry (`rows`: one dict per eps)."""
    attack = get_attack(method)
    if steps < 1:
        raise MedclfError(f"--steps must be at least 1, got {steps}")
    run, cache = open_run_and_cache(run_dir, data, pick_device(device))
    dataset = CacheDataset(cache, split=split)
    if len(dataset) == 0:
        raise DataError(f"{cache.path}: split '{split}' is empty")
    dataset = seeded_subset(dataset, max_images, seed)

    predictor = run.predictor()  # attack the predictor as `evaluate` runs it (test-time flip included)
    eps_list = sorted({0.0, *map(float, eps)})
    probs = {e: _attack_split(predictor, dataset, attack, e, steps, batch_size, seed,
                              desc=f"{method} eps={e * 255:g}/255", progress=progress) for e in eps_list}
    c = run.contract
    task = predictor.task
    rows, n_pos = task.attack_rows(dataset.labels, probs, n_boot, seed)
    entry = {"method": method, "steps": steps if method == "pgd" else 1, "split": split, "data": str(cache.path),
             "n": len(dataset), "n_pos": n_pos, **task.attack_point(), "tta_flip": predictor.tta_flip, "rows": rows}
    _write(run.dir, entry)
    shown = task.example_class  # the figure shows one class's probability (none for a multilabel run)
    if n_examples > 0 and max(eps_list) > 0 and shown is not None:
        from medclf.robust.plots import plot_attack_examples

        idx = _example_indices(probs[0.0], probs[max(eps_list)], task, n_examples)
        examples = _examples(predictor, dataset, idx, attack, max(eps_list), steps, seed)
        plot_attack_examples(examples, c, method, max(eps_list), run.dir.attack_examples(method))
    return entry


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _attack_split(predictor: Predictor, dataset: CacheDataset, attack, eps: float, steps: int, batch_size: int,
                  seed: int, desc: str, progress: bool) -> np.ndarray:
    """Probabilities `N x K` on the attacked images, in dataset order (the Predictor's, on unit-range input)."""
    out = np.zeros((len(dataset), predictor.contract.num_classes), dtype=np.float32)
    generator = torch.Generator().manual_seed(seed)
    model = LogProbs(predictor)
    for images, labels, positions in tqdm(make_loader(dataset, batch_size=batch_size), desc=desc,
                                          disable=not progress, leave=False):
        x = predictor.unit(images)
        # the attacked module normalises inside, so the attack's own normalisation is the identity
        y = labels.to(predictor.device)
        y = predictor.task.attack_target(y)  # multilabel: a 0/1 matrix the attacks' loss reads as such
        x_adv = attack(model, x, y, eps, _identity, steps=steps, generator=generator)
        out[positions.numpy()] = predictor.predict_unit(x_adv)
    return out


def _example_indices(clean: np.ndarray, adv: np.ndarray, task: Task, n: int) -> np.ndarray:
    """Prefer images whose decision the attack flipped (largest change of the shown class's probability first),
    then the rest. `clean`, `adv`: N x K probabilities."""
    shown = task.example_class
    change = np.abs(adv[:, shown] - clean[:, shown])
    flipped = (task.calls(adv) != task.calls(clean)).any(axis=1)
    order = np.lexsort((-change, ~flipped))
    return np.sort(order[:n])


def _examples(predictor: Predictor, dataset: CacheDataset, idx: np.ndarray, attack, eps: float, steps: int,
              seed: int) -> list[dict]:
    images = torch.from_numpy(np.stack([np.asarray(dataset.cache.images[dataset.indices[i]]) for i in idx]))
    x = predictor.unit(images)
    labels = torch.from_numpy(dataset.labels[idx]).to(predictor.device)
    x_adv = attack(LogProbs(predictor), x, labels, eps, _identity, steps=steps,
                   generator=torch.Generator().manual_seed(seed))
    pos = predictor.contract.positive_index
    p_clean, p_adv = predictor.predict_unit(x)[:, pos], predictor.predict_unit(x_adv)[:, pos]
    return [{"id": str(dataset.ids[i]), "label": int(dataset.labels[i]), "clean": x[j, 0].cpu().numpy(),
             "adv": x_adv[j, 0].detach().cpu().numpy(), "p_clean": float(p_clean[j]), "p_adv": float(p_adv[j])}
            for j, i in enumerate(idx)]


def _write(rd: RunDir, entry: dict) -> None:
    path = rd / RunDir.ROBUSTNESS
    entries = read_json(path).get("entries", []) if path.is_file() else []
    key = (entry["method"], entry["steps"], entry["split"], entry["data"])
    old = next((e for e in entries if (e["method"], e["steps"], e["split"], e["data"]) == key), None)
    if old is not None and (old["n"], old["threshold"], old.get("tta_flip")) == (entry["n"], entry["threshold"],
                                                                                entry["tta_flip"]):
        # the same model and images attacked at more radii: keep the earlier radii, new values win
        rows = {r["eps"]: r for r in old["rows"]} | {r["eps"]: r for r in entry["rows"]}
        entry["rows"] = [rows[e] for e in sorted(rows)]
    entries = [e for e in entries if e is not old] + [entry]
    write_json(path, {"entries": entries})
    table = robustness_table(entries)
    with atomic_path(rd / RunDir.ROBUSTNESS_TABLE) as tmp:
        table.to_csv(tmp, index=False)
    from medclf.robust.plots import plot_robustness

    plot_robustness(entries, rd / RunDir.ROBUSTNESS_PLOT)


def robustness_table(entries: list[dict]) -> pd.DataFrame:
    rows = [{"method": e["method"], "steps": e["steps"], "split": e["split"], "n": e["n"],
             **{k: r[k] for k in ("eps", "eps_255", *ROW_KEYS, "loss", "flip_rate")},
             **{k: r[k] for k in CLASS_KEYS if k in r}}  # K-class runs only
            for e in entries for r in e["rows"]]
    return pd.DataFrame(rows)
