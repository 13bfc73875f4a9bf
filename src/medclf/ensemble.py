"""Ensembles: trained models combined into one predictor with the interface of one model (DESIGN habit 6).

`Ensemble.forward(x)` returns the log of the combined class probabilities, so the softmax that every caller
applies to a model's output (`predict_probs`) gives back exactly the combined probabilities:
softmax(log p) = p / sum(p) = p. Combination rules (`COMBINES`):

- ``mean``: the mean of the members' softmax probabilities (default).
- ``weighted``: a weighted mean, weights proportional to each member's ROC AUC on the cache's validation
  split (w_i = AUC_i / sum AUC); equal weights when an AUC is undefined.
- ``vote``: the positive-class probability is the fraction of members whose own positive probability reaches
  their own operating threshold; the remaining mass goes to the other classes in proportion to their mean
  probability (for two classes: [1 - f, f]).

An ensemble run directory holds `ensemble.json`, `config.yaml`, `data_summary.json` and `members/<i>/` (one
ordinary run each), so `evaluate`, `predict` and `report` open it through `medclf.runs.load_run`.
`train_ensemble` trains the members one after another (modes in `MODES`, resume rules and the k-fold design
in docs/ensembles.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from sklearn.metrics import roc_auc_score
from torch import nn
from tqdm import tqdm

from medclf.config import Config, merge, save_config
from medclf.data.cache import Cache, manifest_hash_bytes, split_counts
from medclf.data.dataset import CacheDataset, make_loader
from medclf.data.splits import leakage_audit, partition_indices
from medclf.data.summary import data_summary
from medclf.data.transforms import make_transform, resize
from medclf.engine.device import autocast, pick_device
from medclf.engine.distributed import is_main
from medclf.errors import MedclfError
from medclf.evaluation.thresholds import choose_threshold
from medclf.io import atomic_path, read_json, write_json, write_text
from medclf.models.contract import DataContract
from medclf.models.registry import list_models
from medclf.outdirs import output_dir
from medclf.runs import LoadedRun, load_single

COMBINES = ("mean", "vote", "weighted")
ENSEMBLE_FORMAT = "medclf-ensemble"
_TINY = 1e-12  # log(0) would give -inf logits (and infinite gradients for attacks); softmax renormalises


class Ensemble(nn.Module):
    """Members (any modules returning K logits) combined as one model; `contract` describes its input."""

    def __init__(self, members: list[nn.Module], member_contracts: list[DataContract], contract: DataContract,
                 combine: str = "mean", weights: list[float] | None = None) -> None:
        super().__init__()
        if combine not in COMBINES:
            raise MedclfError(f"unknown combine '{combine}'; choose one of {', '.join(COMBINES)}")
        if not members or len(members) != len(member_contracts):
            raise MedclfError(f"an ensemble needs members with one contract each, got {len(members)} and "
                              f"{len(member_contracts)}")
        self.members = nn.ModuleList(members)
        self.member_contracts = list(member_contracts)
        self.contract = contract
        self.combine = combine
        w = torch.full((len(members),), 1.0 / len(members)) if weights is None else torch.tensor(weights)
        if len(w) != len(members) or (w < 0).any() or not torch.isclose(w.sum(), torch.tensor(1.0), atol=1e-5):
            raise MedclfError(f"ensemble weights must be {len(members)} non-negative numbers summing to 1, "
                              f"got {weights}")
        self.register_buffer("weights", w.float())
        self.register_buffer("thresholds", torch.tensor([c.threshold for c in member_contracts]).float())
        self._adapters = [_needs_adapter(c, contract) for c in member_contracts]

    def member_probs(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities of every member, `M x B x K` (float32)."""
        return torch.stack([torch.softmax(m(self.member_input(i, x)).float(), dim=1)
                            for i, m in enumerate(self.members)])

    def combine_probs(self, member_probs: torch.Tensor) -> torch.Tensor:
        """`M x B x K` member probabilities -> `B x K` combined probabilities (rows sum to 1)."""
        if self.combine != "vote":
            w = self.weights.to(member_probs.device)
            return (w.view(-1, 1, 1) * member_probs).sum(dim=0)
        pos = self.contract.positive_index
        t = self.thresholds.to(member_probs.device).view(-1, 1)
        votes = (member_probs[:, :, pos] >= t).float().mean(dim=0)  # B
        others = member_probs.mean(dim=0)
        others[:, pos] = 0.0
        others = others / others.sum(dim=1, keepdim=True).clamp_min(_TINY)
        out = others * (1.0 - votes).unsqueeze(1)
        out[:, pos] = votes
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log of the combined probabilities: callers' softmax turns it back into them."""
        return torch.log(self.combine_probs(self.member_probs(x)).clamp_min(_TINY))

    def member_input(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Re-express the ensemble's normalised input in member i's contract (size, channels, mean/std)."""
        if not self._adapters[i]:
            return x
        c = self.contract
        unit = x[:, :1] * c.std[0] + c.mean[0]  # grey is replicated across channels, so channel 0 is the image
        member = make_transform(self.member_contracts[i], train=False)
        return member.normalise(resize(unit, self.member_contracts[i].input_size))



def _needs_adapter(member: DataContract, ensemble: DataContract) -> bool:
    keys = ("input_size", "in_chans", "mean", "std")
    return any(getattr(member, k) != getattr(ensemble, k) for k in keys)


def ensemble_contract(first: DataContract, threshold: float, name: str) -> DataContract:
    """The ensemble's contract: the first member's input description, its own name and threshold."""
    return replace(first, model_name=name, threshold=float(threshold), ood=None)


# ---------------------------------------------------------------- loading and predicting


def load_ensemble(run_dir: str | Path, device: torch.device | str = "cpu") -> LoadedRun:
    """Open an ensemble run (`ensemble.json` + `members/<i>/best.pt`) as one LoadedRun."""
    run_dir = Path(run_dir)
    spec = read_ensemble_json(run_dir)
    runs = [load_single(run_dir / m / "best.pt", device) for m in spec["members"]]
    names = {tuple(r.contract.label_names) for r in runs}
    if len(names) > 1:
        raise MedclfError(f"{run_dir}/ensemble.json: members have different label names {sorted(names)}")
    model_names = [r.contract.model_name for r in runs]
    name = f"ensemble[{spec['combine']}]({','.join(model_names)})"
    contract = ensemble_contract(runs[0].contract, spec["threshold"], name)
    model = Ensemble([r.model for r in runs], [r.contract for r in runs], contract, spec["combine"], spec["weights"])
    model.to(device).eval()
    config_path = run_dir / "config.yaml"
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) if config_path.exists() else {}
    return LoadedRun(run_dir=run_dir, model=model, contract=contract, image_size=runs[0].image_size,
                     name=run_dir.name, config=config or {}, norm=runs[0].norm)


def read_ensemble_json(run_dir: Path) -> dict:
    """ensemble.json, checked: format, members (relative dirs), combine, weights, threshold."""
    path = run_dir / "ensemble.json"
    try:
        spec = read_json(path)
    except (OSError, ValueError) as err:
        raise MedclfError(f"{path}: cannot read ({err})") from None
    missing = [k for k in ("members", "combine", "weights", "threshold") if k not in spec]
    if spec.get("format") != ENSEMBLE_FORMAT or missing:
        raise MedclfError(f"{path}: not a medclf ensemble description (format {spec.get('format')!r}, "
                          f"missing {missing})")
    if spec["combine"] not in COMBINES:
        raise MedclfError(f"{path}: combine '{spec['combine']}' is not one of {', '.join(COMBINES)}")
    return spec


@torch.no_grad()
def predict_members(model: Ensemble, contract: DataContract, dataset: CacheDataset, device: torch.device,
                    batch_size: int = 64, tta_flip: bool = False, progress: bool = False,
                    desc: str = "predict") -> tuple[np.ndarray, np.ndarray]:
    """(members' probabilities `M x N x K`, combined probabilities `N x K`) in one pass over the data.

    With `tta_flip`, each view is combined first and the two combinations averaged, exactly what
    `predict_dataset` computes through `forward`; the member probabilities are averaged over the views.
    """
    transform = make_transform(contract, train=False)
    model.eval()
    members = np.zeros((len(model.members), len(dataset), contract.num_classes), dtype=np.float32)
    combined = np.zeros((len(dataset), contract.num_classes), dtype=np.float32)
    loader = make_loader(dataset, batch_size=batch_size, pin_memory=device.type == "cuda")
    for images, _, positions in tqdm(loader, desc=desc, disable=not progress, leave=False):
        x = transform(images.to(device, non_blocking=True))
        with autocast(device, enabled=True):
            views = [model.member_probs(x)] + ([model.member_probs(x.flip(-1))] if tta_flip else [])
            m = torch.stack(views).mean(dim=0)
            c = torch.stack([model.combine_probs(v) for v in views]).mean(dim=0)
        members[:, positions.numpy()] = m.float().cpu().numpy()
        combined[positions.numpy()] = c.float().cpu().numpy()
    return members, combined


def predict_ensemble_dataset(model: Ensemble, contract: DataContract, dataset: CacheDataset,
                             device: torch.device, **kw) -> tuple[np.ndarray, np.ndarray]:
    """(combined probabilities `N x K`, member disagreement `N`): the population standard deviation
    (ddof=0) of the members' positive-class probabilities, the predictions table's `std` column."""
    members, combined = predict_members(model, contract, dataset, device, **kw)
    return combined, members[:, :, contract.positive_index].std(axis=0)

# ---------------------------------------------------------------- training


MODES = ("partition", "kfold", "bootstrap", "models")


@dataclass
class MemberPlan:
    """What member `index` trains on: cache rows (repeats allowed, for bootstrap) and, for k-fold, the rows
    it validates on (None: the cache's val split)."""

    index: int
    model: str
    seed: int
    train_rows: np.ndarray
    val_rows: np.ndarray | None = None


def plan_members(cache: Cache, mode: str, k: int, model_names: list[str], seed: int) -> list[MemberPlan]:
    """The members' training rows, drawn from the cache's train split, patient-grouped and seeded."""
    rows = cache.indices("train")
    labels = cache.manifest["label"].to_numpy(dtype=np.int64)[rows]
    groups = cache.manifest["patient_id"].to_numpy()[rows]
    if mode == "models":
        return [MemberPlan(i, name, seed + i, rows) for i, name in enumerate(model_names)]
    name = model_names[0]
    if mode == "bootstrap":
        rngs = [np.random.default_rng([seed, i]) for i in range(k)]
        return [MemberPlan(i, name, seed + i, rows[bootstrap_positions(labels, groups, rng)])
                for i, rng in enumerate(rngs)]
    parts = partition_indices(labels, groups, k, seed=seed)
    if mode == "partition":
        return [MemberPlan(i, name, seed + i, rows[part]) for i, part in enumerate(parts)]
    plans = []
    for i, held_out in enumerate(parts):
        if len(np.unique(labels[held_out])) < 2:
            raise MedclfError(f"kfold: fold {i} of the train split holds one class only; use fewer members")
        rest = np.sort(np.concatenate([p for j, p in enumerate(parts) if j != i]))
        plans.append(MemberPlan(i, name, seed + i, rows[rest], rows[held_out]))
    return plans


def bootstrap_positions(labels: np.ndarray, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Positions of a bootstrap sample that resamples patients (all their images) with replacement within
    each stratum (a patient's most frequent label), so the class balance of the split is kept."""
    codes, uniques = pd.factorize(pd.Series(groups, dtype=object), sort=True)
    counts = np.zeros((len(uniques), int(labels.max()) + 1), dtype=np.int64)
    np.add.at(counts, (codes, labels), 1)
    strata = counts.argmax(axis=1)
    order = np.argsort(codes, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=len(uniques)))])
    drawn = np.concatenate([rng.choice(np.flatnonzero(strata == s), size=int((strata == s).sum()), replace=True)
                            for s in np.unique(strata)])
    return np.sort(np.concatenate([order[starts[p]:starts[p + 1]] for p in drawn]))


def ensemble_config(cfg: Config, mode: str, models: list[str] | None) -> Config:
    """The config saved at the ensemble run's top: the base config, naming all architectures in models mode."""
    return merge(cfg, {"model": {"name": ",".join(models)}}, origin="ensemble") if mode == "models" else cfg


def train_ensemble(cfg: Config, data_dir: str | Path, out_dir: str | Path, members: int | None = None,
                   mode: str = "partition", models: list[str] | None = None, combine: str = "mean",
                   progress: bool = True) -> Path:
    """Train the members one after another into OUT/members/<i>/, then write ensemble.json. Returns OUT.

    Rerunning on the same OUT keeps finished members (best.pt and member.json, written once `train` returned),
    resumes an interrupted one from its last.pt, and recomputes the combination (so `combine` may change).
    """
    out_dir = Path(out_dir)
    mode, k, model_names = _check_request(cfg, mode, members, models, combine)
    cache = Cache.open(data_dir)
    # medclf's ensemble folder (or a new one), written by this process alone (rank 0, under a process group)
    with output_dir(out_dir, "ensemble") if is_main() else contextlib.nullcontext():
        _check_plan(out_dir, {"mode": mode, "members": k, "models": model_names, "seed": cfg.train.seed,
                              "cache_hash": cache.meta.get("content_hash"), "config": cfg.to_dict()})
        save_config(ensemble_config(cfg, mode, models if mode == "models" else None), out_dir / "config.yaml")
        write_json(out_dir / "data_summary.json", data_summary(cache))
        plans = plan_members(cache, mode, k, model_names, cfg.train.seed)
        for plan in tqdm(plans, desc="ensemble members", disable=not progress):
            train_member(cfg, cache, out_dir, mode, plan, progress)
        finalize_ensemble(out_dir, cache, cfg, mode, combine, plans)
    return out_dir


def _check_request(cfg: Config, mode: str, members: int | None, models: list[str] | None,
                   combine: str) -> tuple[str, int, list[str]]:
    if mode not in MODES:
        raise MedclfError(f"unknown ensemble mode '{mode}'; choose one of {', '.join(MODES)}")
    if combine not in COMBINES:
        raise MedclfError(f"unknown combine '{combine}'; choose one of {', '.join(COMBINES)}")
    if mode == "models":
        if not models:
            raise MedclfError("--mode models needs --models NAME,NAME,... (one member per architecture)")
        if members is not None and members != len(models):
            raise MedclfError(f"--members {members} but {len(models)} models listed; in models mode they must agree")
        known = list_models()
        bad = [m for m in models if m not in known and not m.startswith("timm:")]
        if bad:
            raise MedclfError(f"--models: unknown model(s) {', '.join(bad)} "
                              f"(valid: {', '.join(known)}, or timm:<name>)")
        return mode, len(models), list(models)
    if models:
        raise MedclfError(f"--models is only for --mode models (mode is {mode}; set model.name=... instead)")
    k = 3 if members is None else int(members)
    if k < 2:
        raise MedclfError(f"--members must be at least 2, got {k}")
    return mode, k, [cfg.model.name]


def _check_plan(out_dir: Path, plan: dict) -> None:
    """Refuse to mix members planned with other settings; a fresh OUT gets plan.json."""
    path = out_dir / "plan.json"
    if (out_dir / "last.pt").exists():
        raise MedclfError(f"{out_dir} holds a single-model run; use another --out for the ensemble")
    if path.exists():
        old = read_json(path)
        changed = [k for k in plan if old.get(k) != plan[k]]
        if changed:
            raise MedclfError(f"{out_dir} holds an ensemble planned with other settings ({', '.join(changed)} "
                              "differ); use another --out or the same settings to resume")
        return
    write_json(path, plan)


def member_finished(member_dir: Path) -> bool:
    """A member is finished once train() returned: best.pt with its final threshold and member.json."""
    return (member_dir / "best.pt").is_file() and (member_dir / "member.json").is_file()


def train_member(cfg: Config, cache: Cache, out_dir: Path, mode: str, plan: MemberPlan, progress: bool) -> bool:
    """Train (or resume) one member; returns False when it was already finished and is kept as it is."""
    from medclf.engine.train import train

    member_dir = out_dir / "members" / str(plan.index)
    if member_finished(member_dir):
        return False
    member_dir.mkdir(parents=True, exist_ok=True)
    rows_path = member_dir / "train_rows.npy"
    with atomic_path(rows_path) as tmp, open(tmp, "wb") as f:
        np.save(f, plan.train_rows)
    data = cache.path if plan.val_rows is None else write_fold_view(cache, member_dir / "cache", plan.val_rows)
    member_cfg = merge(cfg, {"model": {"name": plan.model}, "train": {"seed": plan.seed},
                             "data": {"train_subset": str(rows_path.resolve())}},
                       origin=f"ensemble member {plan.index}")
    train(member_cfg, data, member_dir, resume=(member_dir / "last.pt").exists(), progress=progress)
    patients = cache.manifest["patient_id"].to_numpy()
    write_json(member_dir / "member.json", {
        "index": plan.index, "mode": mode, "model": plan.model, "seed": plan.seed,
        "n_train_images": int(len(plan.train_rows)), "n_train_patients": int(len(set(patients[plan.train_rows]))),
        "validated_on": "cache val split" if plan.val_rows is None else f"held-out fold ({len(plan.val_rows)} images)",
    })
    return True


def write_fold_view(cache: Cache, view_dir: Path, val_rows: np.ndarray) -> Path:
    """A k-fold member's view of the cache: the same images.npy (symlinked, nothing copied) and manifest rows,
    with its held-out fold as `val`. The cache's own val rows are marked `train` but are never in the member's
    `data.train_subset`, so no member sees them: they stay free for the ensemble's threshold."""
    if (view_dir / "cache.json").is_file():
        return view_dir
    manifest = cache.manifest.copy()
    split = np.where(manifest["split"].to_numpy() == "test", "test", "train").astype(object)
    split[val_rows] = "val"
    manifest["split"] = split
    base_hash = str(cache.meta.get("content_hash", ""))
    meta = {**cache.meta, "split_counts": split_counts(manifest, cache.label_names),
            "leakage_audit": leakage_audit(manifest["patient_id"], manifest["split"]),
            "content_hash": hashlib.sha256(base_hash.encode() + manifest_hash_bytes(manifest)).hexdigest(),
            "view_of": {"cache": str(cache.path.resolve()), "content_hash": base_hash}}
    tmp = Path(tempfile.mkdtemp(prefix="cache.tmp-", dir=view_dir.parent))
    try:
        os.symlink((cache.path / "images.npy").resolve(), tmp / "images.npy")
        write_text(tmp / "manifest.csv", manifest.to_csv(index=False, lineterminator="\n"))
        write_json(tmp / "cache.json", meta)
        os.rename(tmp, view_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return view_dir


def finalize_ensemble(out_dir: Path, cache: Cache, cfg: Config, mode: str, combine: str,
                      plans: list[MemberPlan]) -> dict:
    """Score the members on the cache's val split, set the weights, choose the ensemble's threshold on the
    combined probabilities, and write ensemble.json (whose presence makes OUT an ensemble run)."""
    device = pick_device(cfg.train.device)
    dirs = [f"members/{p.index}" for p in plans]
    runs = [load_single(out_dir / d / "best.pt", device) for d in dirs]
    contract = ensemble_contract(runs[0].contract, 0.5, "ensemble")
    pos = contract.positive_index
    model = Ensemble([r.model for r in runs], [r.contract for r in runs], contract,
                     "mean" if combine == "weighted" else combine).to(device)
    val = CacheDataset(cache, split="val")
    member_p, combined = predict_members(model, contract, val, device, cfg.eval.batch_size, cfg.eval.tta_flip)
    y = (val.labels == pos).astype(int)
    aucs = [float(roc_auc_score(y, m[:, pos])) if 0 < y.sum() < len(y) else None for m in member_p]
    weights = [1.0 / len(runs)] * len(runs)
    if combine == "weighted" and None not in aucs:
        weights = [a / sum(aucs) for a in aucs]
        combined = np.tensordot(np.asarray(weights, dtype=np.float32), member_p, axes=1)
    threshold = choose_threshold(y, combined[:, pos], method=cfg.eval.threshold, target=cfg.eval.target_sensitivity)
    info = [{**read_json(out_dir / d / "member.json"), "dir": d, "val_auc": auc, "threshold": r.contract.threshold}
            for d, r, auc in zip(dirs, runs, aucs)]
    spec = {"format": ENSEMBLE_FORMAT, "format_version": 1, "mode": mode, "combine": combine, "members": dirs,
            "weights": weights, "threshold": threshold, "threshold_method": cfg.eval.threshold,
            "threshold_split": "val", "member_info": info, "cache": str(cache.path.resolve()),
            "cache_hash": cache.meta.get("content_hash")}
    write_json(out_dir / "ensemble.json", spec)
    return spec
