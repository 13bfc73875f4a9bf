"""`medclf study`: a grid of named variants over one cache, each trained and evaluated, then compared.

A study file (YAML) holds::

    data: CACHE                 # the prepared cache (or pass --data)
    out: runs/my_study          # where variants go, one folder each (or pass --out)
    split: test                 # the split every variant is evaluated on and compared on
    n_boot: 1000                # bootstrap resamples for intervals and paired tests (default: eval.n_boot)
    base:                       # every variant starts from this config
      config: resnet50_imagenet_224  # preset name or path
      overrides: {train.epochs: 10}    # a mapping of dotted keys, or a list of "key=value"
    grid:                       # optional: the Cartesian product of factor levels, named level_level
      sampler: {plain: {data.sampler: shuffle}, balanced: {data.sampler: balanced}}
      loss: {ce: {loss.name: ce}, focal: {loss.name: focal}}
    variants:                   # optional: named variants, after the grid ones
      ensemble3:
        overrides: {}
        ensemble: {members: 3, mode: partition, combine: mean}   # makes it an ensemble (medclf ensemble)

The first variant is the reference of the comparison. A variant is finished when its
`metrics_<split>.json` exists; rerunning the study keeps finished variants, resumes an interrupted one
(single runs from last.pt, ensembles member by member) and trains the missing ones.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml
from tqdm import tqdm

from medclf.config import Config, flat_keys, load_config, outcome_config
from medclf.errors import ConfigError, MedclfError
from medclf.io import write_json
from medclf.outdirs import output_dir
from medclf.runs.layout import RunDir
from medclf.tracking import parent_run

STUDY_KEYS = ("data", "out", "split", "n_boot", "base", "grid", "variants")
ENSEMBLE_KEYS = ("members", "mode", "combine", "models")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Variant:
    name: str
    overrides: list[str]
    ensemble: dict[str, Any] | None = None


@dataclass
class Study:
    path: Path
    data: Path
    out: Path
    split: str
    n_boot: int | None
    preset: str | None
    base_overrides: list[str]
    variants: list[Variant] = field(default_factory=list)

    def config(self, variant: Variant) -> Config:
        """The resolved config of one variant (base preset, base overrides, then the variant's)."""
        try:
            return load_config(self.preset, self.base_overrides + variant.overrides)
        except ConfigError as err:
            raise ConfigError(f"{self.path}: variant '{variant.name}': {err}") from None


def load_study(path: str | Path, out: str | Path | None = None, data: str | Path | None = None,
               overrides: Sequence[str] = ()) -> Study:
    """Read and check a study file; every variant's config is resolved here, before anything trains.
    `overrides` (key=value) are added to the file's base overrides (e.g. where to log: track.*)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the study file ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a study file is a mapping (data, out, base, variants, ...)")
    unknown = sorted(set(raw) - set(STUDY_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)} (valid: {', '.join(STUDY_KEYS)})")
    data, out = data or raw.get("data"), out or raw.get("out")
    if not data or not out:
        raise ConfigError(f"{path}: '{'data' if not data else 'out'}' is not set (in the file, or --data/--out)")
    base = raw.get("base") or {}
    if not isinstance(base, dict) or set(base) - {"config", "overrides"}:
        raise ConfigError(f"{path}: 'base' must be a mapping with 'config' and/or 'overrides'")
    split = str(raw.get("split", "test"))
    if split not in ("train", "val", "test"):
        raise ConfigError(f"{path}: split must be train, val or test, not '{split}'")
    n_boot = raw.get("n_boot")
    if n_boot is not None and (not isinstance(n_boot, int) or n_boot < 1):
        raise ConfigError(f"{path}: n_boot must be a positive integer, got {n_boot!r}")
    study = Study(path, Path(data), Path(out), split, n_boot, base.get("config"),
                  overrides_list(base.get("overrides"), f"{path}: base.overrides") + list(overrides))
    study.variants = grid_variants(raw.get("grid"), path) + named_variants(raw.get("variants"), path)
    if not study.variants:
        raise ConfigError(f"{path}: no variants (add 'variants' or 'grid')")
    names = [v.name for v in study.variants]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: variant names repeat: {sorted({n for n in names if names.count(n) > 1})}")
    for v in study.variants:
        study.config(v)
    return study


def overrides_list(value: Any, where: str) -> list[str]:
    """`key=value` strings from a list of them or a mapping (dotted or nested keys)."""
    if value is None:
        return []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    if isinstance(value, dict):
        return [f"{key}={json.dumps(v)}" for key, v in flat_keys(value).items()]  # JSON is valid YAML for the parser
    raise ConfigError(f"{where}: overrides must be a mapping of config keys or a list of key=value strings")


def _check_name(name: Any, where: Path) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{where}: variant name {name!r} must be letters, digits, '_', '-' or '.' (a folder name)")
    return name


def grid_variants(grid: Any, path: Path) -> list[Variant]:
    if grid is None:
        return []
    if not isinstance(grid, dict) or not all(isinstance(v, dict) and v for v in grid.values()):
        raise ConfigError(f"{path}: 'grid' maps each factor to its levels {{level: overrides}}")
    levels = [[(name, overrides_list(o, f"{path}: grid.{factor}.{name}")) for name, o in options.items()]
              for factor, options in grid.items()]
    return [Variant(_check_name("_".join(str(n) for n, _ in combo), path), [o for _, ov in combo for o in ov])
            for combo in itertools.product(*levels)]


def named_variants(variants: Any, path: Path) -> list[Variant]:
    if variants is None:
        return []
    if not isinstance(variants, dict):
        raise ConfigError(f"{path}: 'variants' maps names to {{overrides, ensemble}}")
    out = []
    for name, spec in variants.items():
        spec = spec or {}
        if not isinstance(spec, dict) or set(spec) - {"overrides", "ensemble"}:
            raise ConfigError(f"{path}: variant '{name}' takes 'overrides' and 'ensemble' only")
        ens = spec.get("ensemble")
        if ens is not None and (not isinstance(ens, dict) or set(ens) - set(ENSEMBLE_KEYS)):
            raise ConfigError(f"{path}: variant '{name}': ensemble takes {', '.join(ENSEMBLE_KEYS)}")
        if ens is not None and isinstance(ens.get("models"), str):
            ens = {**ens, "models": [m.strip() for m in ens["models"].split(",") if m.strip()]}
        out.append(Variant(_check_name(name, path), overrides_list(spec.get("overrides"), f"{path}: {name}"), ens))
    return out


def check_drift(run_dir: Path, expected: Config, variant: Variant) -> None:
    """A variant folder trained with another config must not be silently kept (or resumed with a new one)."""
    name, saved_path, plan_path = variant.name, RunDir(run_dir).config_path, RunDir(run_dir) / RunDir.PLAN
    if plan_path.is_file() != (variant.ensemble is not None) and saved_path.is_file():
        kind = "an ensemble" if plan_path.is_file() else "a single model"
        raise MedclfError(f"variant '{name}' in {run_dir} holds {kind}, which the study no longer asks for; "
                          "delete that folder to retrain it, or use another --out")
    if variant.ensemble is not None and plan_path.is_file():
        plan = json.loads(plan_path.read_text(encoding="utf-8"))
        mode = variant.ensemble.get("mode", "partition")
        members = variant.ensemble.get("members") or len(variant.ensemble.get("models") or []) or 3
        if (plan.get("mode"), plan.get("members")) != (mode, members):
            raise MedclfError(f"variant '{name}' in {run_dir} is a {plan.get('members')}-member {plan.get('mode')} "
                              f"ensemble, not {members}-member {mode}; delete that folder or use another --out")
    if not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {}
    want = json.loads(json.dumps(expected.to_dict()))
    changed = [k for k, v in flat_keys(outcome_config(want)).items() if _get(saved, k) != v]
    if changed:
        raise MedclfError(f"variant '{name}' in {run_dir} was trained with another config ({', '.join(changed[:3])} "
                          "differ); delete that folder to retrain it, or use another --out")


def _get(tree: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def run_variant(study: Study, variant: Variant, progress: bool) -> Path:
    """Train (or resume) and evaluate one variant into OUT/<name>."""
    from medclf.engine.evaluate import evaluate_run
    from medclf.engine.train import train
    from medclf.ensemble import train_ensemble

    cfg = study.config(variant)
    run_dir = study.out / variant.name
    if variant.ensemble is not None:
        train_ensemble(cfg, study.data, run_dir, progress=progress, **variant.ensemble)
    else:
        train(cfg, study.data, run_dir, resume=RunDir(run_dir).last.exists(), progress=progress)
    evaluate_run(run_dir, split=study.split, n_boot=study.n_boot or cfg.eval.n_boot, progress=progress)
    return run_dir


def run_study(path: str | Path, out: str | Path | None = None, data: str | Path | None = None,
              progress: bool = True, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Run every unfinished variant, then compare all of them (OUT/comparison.md, .csv, .html).

    Returns the study summary also written to OUT/study.json: per variant its folder and whether it was
    `trained` now or `kept` (finished before), plus the comparison table's path.
    """
    from medclf.data.cache import Cache

    study = load_study(path, out, data, overrides)
    Cache.open(study.data)  # a wrong path fails now, not after the first variant
    with output_dir(study.out, "study"):  # medclf's study folder (or a new one), run by this process alone
        # the study's own tracked run; each variant's run is its child
        with parent_run(study.out, study.config(study.variants[0]), "study") as tracker:
            summary = _run_variants(study, progress)
            tracker.log_artifact(Path(summary["comparison"]))
            tracker.log_artifact(study.out / RunDir.STUDY)
            return summary


def _run_variants(study: Study, progress: bool) -> dict[str, Any]:
    from medclf.compare import compare_runs
    from medclf.ensemble import ensemble_config

    status: dict[str, dict] = {}
    for variant in tqdm(study.variants, desc="study variants", disable=not progress):
        run_dir = study.out / variant.name
        cfg = study.config(variant)
        if variant.ensemble is not None:
            cfg = ensemble_config(cfg, variant.ensemble.get("mode", "partition"), variant.ensemble.get("models"))
        check_drift(run_dir, cfg, variant)
        if RunDir(run_dir).metrics(study.split).is_file():
            status[variant.name] = {"dir": str(run_dir), "status": "kept"}
            continue
        t0 = time.perf_counter()
        run_variant(study, variant, progress)
        status[variant.name] = {"dir": str(run_dir), "status": "trained",
                                "seconds": round(time.perf_counter() - t0, 1)}
    n_boot = study.n_boot or study.config(study.variants[0]).eval.n_boot
    comparison = study.out / RunDir.COMPARISON
    compare_runs([study.out / v.name for v in study.variants], split=study.split, out=comparison, n_boot=n_boot,
                 force=True)  # the study folder's own file, rewritten on every (resumed) run
    summary = {"study": str(study.path.resolve()), "data": str(study.data.resolve()), "split": study.split,
               "variants": status, "comparison": str(comparison)}
    write_json(study.out / RunDir.STUDY, summary)
    return summary
