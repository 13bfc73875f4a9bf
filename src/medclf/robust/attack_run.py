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
from medclf.evaluation.macro_auc import macro_roc_auc
from medclf.evaluation.metrics import binary_metrics
from medclf.evaluation.multilabel import multilabel_metrics
from medclf.io import atomic_path, read_json, write_json
from medclf.losses import multi_hot_target
from medclf.models.outputs import PROB_EPS
from medclf.robust.attacks import get_attack
from medclf.runs import LogProbs, Predictor, RunDir, open_run_and_cache
from medclf.tasks import multi_hot

ROW_KEYS = ("accuracy", "f1", "roc_auc", "recall", "specificity", "precision", "pr_auc")
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
    if c.multilabel:
        rows, n_pos = _multilabel_rows(c, dataset.labels, probs, n_boot, seed)
        point = {"threshold": float(c.threshold), "thresholds": c.label_thresholds()}
    else:
        rows, n_pos = _binary_rows(c, dataset.labels, probs, n_boot, seed)
        point = {"threshold": float(c.threshold)}
    entry = {"method": method, "steps": steps if method == "pgd" else 1, "split": split, "data": str(cache.path),
             "n": len(dataset), "n_pos": n_pos, **point, "tta_flip": predictor.tta_flip, "rows": rows}
    _write(run.dir, entry)
    if n_examples > 0 and max(eps_list) > 0 and not c.multilabel:  # the figure shows the positive class
        from medclf.robust.plots import plot_attack_examples

        pos, threshold = c.positive_index, c.threshold
        idx = _example_indices(probs[0.0][:, pos], probs[max(eps_list)][:, pos], threshold, n_examples)
        examples = _examples(predictor, dataset, idx, attack, max(eps_list), steps, seed)
        plot_attack_examples(examples, c, method, max(eps_list), run.dir.attack_examples(method))
    return entry


def _binary_rows(c, labels: np.ndarray, probs: dict[float, np.ndarray], n_boot: int,
                 seed: int) -> tuple[list[dict], int]:
    """One row per eps on the positive class at the run's threshold (and the K-class figures); the positives."""
    pos, threshold = c.positive_index, c.threshold
    y = (labels == pos).astype(int)
    clean_call = probs[0.0][:, pos] >= threshold
    rows = []
    for e, p in probs.items():
        m = binary_metrics(y, p[:, pos], threshold=threshold, n_boot=n_boot, seed=seed)
        nll = -np.log(np.clip(p[np.arange(len(y)), labels], 1e-12, None)).mean()
        rows.append({"eps": e, "eps_255": round(e * 255, 6), **{k: m[k] for k in ROW_KEYS},
                     "loss": float(nll), "flip_rate": float(np.mean((p[:, pos] >= threshold) != clean_call)),
                     "ci": {k: m["ci"].get(k) for k in ROW_KEYS if k in (m.get("ci") or {})},
                     **class_figures(labels, p)})
    return rows, int(y.sum())


def _multilabel_rows(c, labels: np.ndarray, probs: dict[float, np.ndarray], n_boot: int,
                     seed: int) -> tuple[list[dict], int]:
    """A multilabel run's rows: the macro averages over findings (each at its own threshold), `accuracy` the share
    of right image-finding calls, `flip_rate` the share of images whose called findings changed, `loss` the mean
    binary cross-entropy summed over findings; and the images with a finding. No example figure (it shows one
    class's probability)."""
    thresholds = np.asarray(c.label_thresholds())
    y = multi_hot(labels, c.num_classes)
    clean_calls = probs[0.0] >= thresholds
    rows = []
    for e, p in probs.items():
        m = multilabel_metrics(labels, p, c.label_names, thresholds, n_boot=n_boot, seed=seed)
        clipped = np.clip(p.astype(np.float64), PROB_EPS, 1 - PROB_EPS)
        bce = -(y * np.log(clipped) + (1 - y) * np.log(1 - clipped)).sum(axis=1).mean()
        calls = p >= thresholds
        rows.append({"eps": e, "eps_255": round(e * 255, 6), **{k: m["macro"][k] for k in ROW_KEYS if k in m["macro"]},
                     "accuracy": float((calls == y.astype(bool)).mean()), "loss": float(bce),
                     "flip_rate": float(np.mean((calls != clean_calls).any(axis=1))),
                     "ci": {"roc_auc": m["ci"]["macro_roc_auc"]}})
    return rows, int(y.any(axis=1).sum())


def class_figures(labels: np.ndarray, probs: np.ndarray) -> dict:
    """`class_accuracy` and `macro_roc_auc` of K > 2 class probabilities; nothing for a binary run (its rows keep
    their keys)."""
    if probs.shape[1] <= 2:
        return {}
    return {"class_accuracy": float(np.mean(probs.argmax(axis=1) == labels)),
            "macro_roc_auc": macro_roc_auc(labels, np.clip(probs, 0.0, 1.0))}


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
        if predictor.contract.multilabel:  # the attacks' loss reads a 0/1 matrix as a multi-label truth
            y = multi_hot_target(y, predictor.contract.num_classes)
        x_adv = attack(model, x, y, eps, _identity, steps=steps, generator=generator)
        out[positions.numpy()] = predictor.predict_unit(x_adv)
    return out


def _example_indices(clean: np.ndarray, adv: np.ndarray, threshold: float, n: int) -> np.ndarray:
    """Prefer images whose decision the attack flipped (largest probability change first), then the rest."""
    change = np.abs(adv - clean)
    flipped = (adv >= threshold) != (clean >= threshold)
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
