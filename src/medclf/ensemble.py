"""Ensemble training: members trained one after another on parts of the training split, combined into one run.

An ensemble run directory holds `ensemble.json`, `config.yaml`, `data_summary.json` and `members/<i>/` (one
ordinary run each), so every command opens it through `medclf.runs.open_run`, as one model (the `Ensemble`
module in medclf.models.ensemble). `train_ensemble` trains the members (modes in `MODES`; resume rules and the
k-fold design in docs/ensembles.md); `finalize_ensemble` weights them and chooses the ensemble's threshold
through the Predictor.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from medclf.config import Config, merge, outcome_config, save_config
from medclf.data.cache import Cache, write_cache_view
from medclf.data.dataset import CacheDataset
from medclf.data.splits import partition_indices, split_strata
from medclf.data.summary import data_summary
from medclf.device import pick_device
from medclf.engine.calibrate import fit_decisions
from medclf.engine.distributed import is_main
from medclf.errors import MedclfError
from medclf.io import atomic_path, read_json, write_json
from medclf.models.ensemble import COMBINES, Ensemble, ensemble_contract
from medclf.models.registry import list_models
from medclf.outdirs import output_dir
from medclf.runs import ENSEMBLE_FORMAT, Predictor, RunDir, open_checkpoint
from medclf.tasks import ThresholdRule, task_for
from medclf.tracking import Tracker, parent_run

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
    labels = split_strata(labels, cache.task, len(cache.label_names))  # multilabel: rarest label, as prepare
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
                              "cache_hash": cache.meta.get("content_hash"),
                              "config": outcome_config(cfg.to_dict())})
        save_config(ensemble_config(cfg, mode, models if mode == "models" else None), RunDir(out_dir).config_path)
        write_json(RunDir(out_dir).data_summary_path, data_summary(cache))
        plans = plan_members(cache, mode, k, model_names, cfg.train.seed)
        with parent_run(out_dir, cfg, "ensemble") if is_main() else contextlib.nullcontext(Tracker([])) as tracker:
            tracker.log_config(cfg)
            for plan in tqdm(plans, desc="ensemble members", disable=not progress):
                train_member(cfg, cache, out_dir, mode, plan, progress)
            spec = finalize_ensemble(out_dir, cache, cfg, mode, combine, plans)
            tracker.log_scalars({"threshold": spec["threshold"],
                                 **{f"member_{m['index']}/val_auc": m["val_auc"] for m in spec["member_info"]}})
            tracker.log_model(out_dir)
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
    path = out_dir / RunDir.PLAN
    if RunDir(out_dir).last.exists():
        raise MedclfError(f"{out_dir} holds a single-model run; use another --out for the ensemble")
    if path.exists():
        old = read_json(path)
        old["config"] = outcome_config(old.get("config") or {})  # plans of older versions held every key
        changed = [k for k in plan if old.get(k) != plan[k]]
        if changed:
            raise MedclfError(f"{out_dir} holds an ensemble planned with other settings ({', '.join(changed)} "
                              "differ); use another --out or the same settings to resume")
        return
    write_json(path, plan)


def member_finished(member: RunDir) -> bool:
    """A member is finished once train() returned: best.pt with its final threshold and member.json."""
    return member.best.is_file() and (member / RunDir.MEMBER_INFO).is_file()


def train_member(cfg: Config, cache: Cache, out_dir: Path, mode: str, plan: MemberPlan, progress: bool) -> bool:
    """Train (or resume) one member; returns False when it was already finished and is kept as it is."""
    from medclf.engine.train import train

    member = RunDir(out_dir).member(plan.index)
    if member_finished(member):
        return False
    member.path.mkdir(parents=True, exist_ok=True)
    with atomic_path(member / RunDir.TRAIN_ROWS) as tmp, open(tmp, "wb") as f:
        np.save(f, plan.train_rows)  # a record of what the member saw; training gets the rows as an argument
    data = cache.path if plan.val_rows is None else write_fold_view(cache, member / RunDir.FOLD_CACHE, plan.val_rows)
    member_cfg = merge(cfg, {"model": {"name": plan.model}, "train": {"seed": plan.seed}},
                       origin=f"ensemble member {plan.index}")
    train(member_cfg, data, member.path, resume=member.last.exists(), progress=progress, train_rows=plan.train_rows)
    patients = cache.manifest["patient_id"].to_numpy()
    write_json(member / RunDir.MEMBER_INFO, {
        "index": plan.index, "mode": mode, "model": plan.model, "seed": plan.seed,
        "n_train_images": int(len(plan.train_rows)), "n_train_patients": int(len(set(patients[plan.train_rows]))),
        "validated_on": "cache val split" if plan.val_rows is None else f"held-out fold ({len(plan.val_rows)} images)",
    })
    return True


def write_fold_view(cache: Cache, view_dir: Path, val_rows: np.ndarray) -> Path:
    """A k-fold member's view of the cache: the same images (nothing copied) and manifest rows, with its
    held-out fold as `val`. The cache's own val rows are marked `train` but are never among the member's training
    rows, so no member sees them: they stay free for the ensemble's threshold."""
    manifest = cache.manifest.copy()
    split = np.where(manifest["split"].to_numpy() == "test", "test", "train").astype(object)
    split[val_rows] = "val"
    manifest["split"] = split
    return write_cache_view(cache, view_dir, manifest)


def finalize_ensemble(out_dir: Path, cache: Cache, cfg: Config, mode: str, combine: str,
                      plans: list[MemberPlan]) -> dict:
    """Score the members on the cache's val split, set the weights, choose the ensemble's threshold on the
    combined probabilities (through the Predictor, with the run's test-time augmentation), and write
    ensemble.json (whose presence makes OUT an ensemble run)."""
    device = pick_device(cfg.train.device)
    rd = RunDir(out_dir)
    dirs = [f"{RunDir.MEMBERS}/{p.index}" for p in plans]
    runs = [open_checkpoint(rd.member(d).best, device) for d in dirs]
    contract = ensemble_contract(runs[0].contract, 0.5, "ensemble")
    task = task_for(contract)
    val = CacheDataset(cache, split="val")

    def validation(combine_as: str, weights: list[float] | None):
        """The Predictor's outputs on val for the ensemble as `open_run` will build it from ensemble.json."""
        model = Ensemble([r.model for r in runs], [r.contract for r in runs], contract, combine_as, weights)
        return Predictor(model.to(device), contract, tta_flip=cfg.eval.tta_flip, device=device,
                         detectors=[]).predict_dataset(val, batch_size=cfg.eval.batch_size)

    prediction = validation("mean" if combine == "weighted" else combine, None)
    member_p, combined = prediction.member_probs, prediction.probs
    aucs = [task.validation_auc(val.labels, m) for m in member_p]
    weights = [1.0 / len(runs)] * len(runs)
    if combine == "weighted" and None not in aucs:
        weights = [a / sum(aucs) for a in aucs]
        # predicted again with the weights in the model: the threshold is chosen on the very numbers (same graph,
        # same test-time flip, same float operations) that every later prediction applies it to
        combined = validation(combine, weights).probs
    # the ensemble's own temperature on its combined probabilities (the members' own are not used inside it),
    # then the members' rule (one threshold per scored column), so both say why alike
    chosen = fit_decisions(contract, combined, val.labels, cfg.eval.calibrate, ThresholdRule.from_config(cfg),
                           cfg.eval.conformal_alpha, cfg.eval.conformal_score)
    info = [{**read_json(rd.member(d) / RunDir.MEMBER_INFO), "dir": d, "val_auc": auc,
             "threshold": task_for(r.contract).threshold_entry()} for d, r, auc in zip(dirs, runs, aucs)]
    fields = task.threshold_fields(chosen)
    spec = {"format": ENSEMBLE_FORMAT, "format_version": 1, "mode": mode, "combine": combine, "members": dirs,
            "weights": weights, "threshold": fields.pop("threshold"), "threshold_method": cfg.eval.threshold,
            "threshold_split": "val", "threshold_source": chosen.source, "threshold_reason": chosen.reason,
            "threshold_warnings": chosen.warnings, "member_info": info, "cache": str(cache.path.resolve()),
            "cache_hash": cache.meta.get("content_hash"), "temperature": contract.temperature,
            "conformal": contract.conformal, "operating_point": contract.operating_point, **fields}
    for warning in chosen.warnings:
        print(f"warning: {out_dir}: {warning}", file=sys.stderr)
    write_json(rd.ensemble_path, spec)
    return spec


