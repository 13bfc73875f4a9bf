"""A run directory's layout: every file name of a run is written here, and nowhere else.

A run directory is what `medclf train` (one model) or `medclf ensemble` (members under `members/<i>/`) leaves;
`evaluate`, `attack`, `ood`, `explain`, `export` and `report` add their files to it. `RunDir` knows where each
file lives and reads the typed ones back (config, data summary, ensemble description, evaluated splits).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from medclf.config import Config, config_from_dict
from medclf.errors import MedclfError
from medclf.io import read_json
from medclf.outdirs import folder_kind, register_recogniser

if TYPE_CHECKING:
    import pandas as pd

ENSEMBLE_FORMAT = "medclf-ensemble"
PLOT_KINDS = ("confusion", "roc", "pr", "calibration", "roc_classes",  # roc_classes: K > 2 classes only
              "decision_curve")
# config keys that older medclf versions stored and this one no longer has (ignored when a run is opened)
_RETIRED_KEYS = {"data": ("train_subset",)}


class RunDir:
    """The files of one run directory (single model, ensemble, or an ensemble member)."""

    CONFIG = "config.yaml"
    HISTORY = "history.csv"
    CURVES = "curves.png"
    BEST = "best.pt"
    LAST = "last.pt"
    DATA_SUMMARY = "data_summary.json"
    ENSEMBLE = "ensemble.json"
    PLAN = "plan.json"
    MEMBERS = "members"
    MEMBER_INFO = "member.json"
    TRAIN_ROWS = "train_rows.npy"
    FOLD_CACHE = "cache"
    METRICS = "metrics.json"  # the last evaluated test split (DESIGN: metrics.json)
    REPORT = "report.html"
    ROBUSTNESS = "robustness.json"
    ROBUSTNESS_TABLE = "robustness.csv"
    ROBUSTNESS_PLOT = "robustness.png"
    OOD = "ood.json"
    OOD_TABLE = "ood.csv"
    EXPLAIN = "explain"
    EXPLANATIONS = "explanations.csv"  # the index `explain` writes beside its overlays
    EXPLAIN_SCORES = "explain_scores.json"
    EXPLAIN_SCORES_TABLE = "explain_scores.md"
    EXPLAIN_PER_IMAGE = "explain_scores_per_image.csv"
    CONTRASTIVE_HISTORY = "contrastive_history.csv"
    ONNX = "model.onnx"
    ONNX_INT8 = "model.int8.onnx"  # `export --int8`: the same graph, model ops quantised (medclf.runs.quantize)
    INT8 = "int8.json"  # the fp32 vs int8 comparison and the int8 engine's operating threshold(s)
    STUDY = "study.json"
    TENSORBOARD = "tensorboard"
    TRACKING = "tracking.json"
    COMPARISON = "comparison.md"  # a study's comparison (`.csv` and `.html` beside it)
    # names that carry a split tag or a method: built by predictions(), metrics(), plot(), attack_examples()
    PREDICTIONS_PREFIX = "predictions_"
    METRICS_PREFIX = "metrics_"
    ATTACK_EXAMPLES_PREFIX = "attack_examples_"
    SUBGROUPS = "subgroups"  # stem of subgroups_<tag>.json / .csv / .png (`evaluate --by`)
    DECISION_CURVE = "decision_curve"  # stem of decision_curve_<tag>.csv (the plot is plot("decision_curve", tag))
    RECALIBRATION = "recalibration.json"  # `medclf recalibrate`: where the run was re-fitted, on which images

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    # ------------------------------------------------------------------ files
    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def best(self) -> Path:
        return self.path / self.BEST

    @property
    def last(self) -> Path:
        return self.path / self.LAST

    @property
    def history_path(self) -> Path:
        return self.path / self.HISTORY

    @property
    def curves_path(self) -> Path:
        return self.path / self.CURVES

    @property
    def data_summary_path(self) -> Path:
        return self.path / self.DATA_SUMMARY

    @property
    def ensemble_path(self) -> Path:
        return self.path / self.ENSEMBLE

    @property
    def onnx_path(self) -> Path:
        return self.path / self.ONNX

    @property
    def int8_path(self) -> Path:
        return self.path / self.ONNX_INT8

    @property
    def int8_report_path(self) -> Path:
        return self.path / self.INT8

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / self.TENSORBOARD

    @property
    def tracking_path(self) -> Path:
        return self.path / self.TRACKING

    def export_path(self, suffix: str) -> Path:
        return self.path / f"model{suffix}"

    def predictions(self, tag: str) -> Path:
        """`predictions_<tag>.csv`; tag is a split, or `<split>@<hash8>` for another cache."""
        return self.path / f"{self.PREDICTIONS_PREFIX}{check_tag(tag)}.csv"

    def metrics(self, tag: str) -> Path:
        return self.path / f"{self.METRICS_PREFIX}{check_tag(tag)}.json"

    def plot(self, kind: str, tag: str) -> Path:
        if kind not in PLOT_KINDS:
            raise ValueError(f"unknown plot kind {kind!r}")
        return self.path / f"{kind}_{check_tag(tag)}.png"

    def subgroups(self, tag: str, suffix: str = ".json") -> Path:
        """`subgroups_<tag>.json` (results per group), `.csv` (the same as a table) or `.png` (the forest plot)."""
        if suffix not in (".json", ".csv", ".png"):
            raise ValueError(f"unknown subgroups file suffix {suffix!r}")
        return self.path / f"{self.SUBGROUPS}_{check_tag(tag)}{suffix}"

    def decision_curve(self, tag: str) -> Path:
        """`decision_curve_<tag>.csv`: net benefit per label and threshold probability (`evaluate`)."""
        return self.path / f"{self.DECISION_CURVE}_{check_tag(tag)}.csv"

    @property
    def recalibration_path(self) -> Path:
        return self.path / self.RECALIBRATION

    def subgroup_tags(self) -> list[str]:
        """Tags with a subgroups_<tag>.json in the run, train/val/test first."""
        stem = f"{self.SUBGROUPS}_"
        return sorted((p.name[len(stem):-len(".json")] for p in self.path.glob(f"{stem}*.json")), key=tag_order)

    def attack_examples(self, method: str) -> Path:
        return self.path / f"{self.ATTACK_EXAMPLES_PREFIX}{method}.png"

    def explain_gallery(self, outcome: str) -> Path:
        """`explain/gallery_<outcome>.png` (outcome tp, fp, fn or tn), written by `explain --score`."""
        return self.path / self.EXPLAIN / f"gallery_{outcome}.png"

    def member(self, rel: str | int) -> RunDir:
        """A member's own run directory: `members/<i>` (int) or the relative dir ensemble.json names."""
        return RunDir(self.path / (f"{self.MEMBERS}/{rel}" if isinstance(rel, int) else rel))

    # ------------------------------------------------------------------ what the run holds
    def exists(self) -> bool:
        return self.path.is_dir()

    @property
    def is_ensemble(self) -> bool:
        return self.ensemble_path.is_file()

    def checkpoints(self) -> list[Path]:
        """The checkpoints inference uses: best.pt, or every member's best.pt."""
        if self.is_ensemble:
            return [self.member(m).best for m in self.ensemble_spec()["members"]]
        return [self.best]

    def inference_files(self) -> list[str]:
        """The files `open_run` needs, relative to the run: what a copy of the model must carry."""
        if not self.is_ensemble:
            return [self.BEST]
        members = [f"{m}/{self.BEST}" for m in self.ensemble_spec()["members"]]
        return [self.ENSEMBLE, self.CONFIG, *members]

    def config(self) -> Config:
        """The run's resolved config (typed); retired keys of older versions are dropped."""
        if not self.config_path.is_file():
            raise MedclfError(f"{self.path}: no {self.CONFIG} (not a medclf run directory?)")
        data = yaml.safe_load(self.config_path.read_text(encoding="utf-8")) or {}
        return config_from_stored(data)

    def data_summary(self) -> dict[str, Any] | None:
        return read_json(self.data_summary_path) if self.data_summary_path.is_file() else None

    def cache_path(self) -> Path | None:
        """The cache the run was trained on, as recorded in its data summary."""
        summary = self.data_summary()
        return Path(summary["cache"]) if summary and summary.get("cache") else None

    def ensemble_spec(self) -> dict[str, Any]:
        """ensemble.json, checked: format, members (relative dirs), combine, weights, threshold."""
        from medclf.models.ensemble import COMBINES

        path = self.ensemble_path
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

    def evaluated(self) -> dict[str, Path]:
        """tag -> metrics file of every evaluated split, in display order (train, val, test, then the rest)."""
        prefix = self.METRICS_PREFIX
        found = {p.name[len(prefix):-len(".json")]: p for p in self.path.glob(f"{prefix}*.json")}
        if not found and (self.path / self.METRICS).is_file():
            found = {"test": self.path / self.METRICS}
        return dict(sorted(found.items(), key=lambda kv: tag_order(kv[0])))

    def evaluation_tag(self, split: str, cache: str | Path | None = None, content_hash: str | None = None) -> str:
        """The tag `evaluate` files `split` of `cache` under: the split itself on the run's own cache (or when no
        cache is named), `<split>@<first 8 of the cache's content hash>` on any other cache."""
        if cache is None or self.trained_on(cache):
            return split
        return f"{split}@{(content_hash or 'ext')[:8]}"

    def trained_on(self, cache: str | Path) -> bool:
        """True when `cache` is the cache the run was trained on (as its data summary records)."""
        own = self.cache_path()
        return own is not None and Path(cache).resolve() == own.resolve()

    def prediction_tables(self) -> dict[str, Path]:
        """tag -> predictions_<tag>.csv present in the run."""
        prefix = self.PREDICTIONS_PREFIX
        return {p.stem[len(prefix):]: p for p in sorted(self.path.glob(f"{prefix}*.csv"))}

    def history(self) -> pd.DataFrame:
        import pandas as pd

        return pd.read_csv(self.history_path)


# How `medclf.outdirs` recognises these folders when they carry no marker (a run never does): by what their
# files hold, never by their names alone (another program's best.pt or config.yaml proves nothing).
_SUMMARY_KEYS = {"content_hash", "label_names", "task", "split_counts"}  # medclf.data.summary.data_summary's
_CONFIG_SECTIONS = {"model", "data", "train"}  # a saved config holds every section (an empty one proves nothing)


def _proves_run(path: Path) -> bool:
    """A medclf checkpoint (format and data contract), or the two files `train` writes first: a valid medclf
    config beside medclf's data summary; or an ensemble member's folder inside a medclf ensemble."""
    from medclf.models.checkpoint import is_medclf_checkpoint  # torch: only when a folder is judged

    rd = RunDir(path)
    if any(p.is_file() and is_medclf_checkpoint(p) for p in (rd.last, rd.best)):
        return True
    if rd.config_path.is_file() and rd.data_summary_path.is_file():
        summary = read_json(rd.data_summary_path)
        if isinstance(summary, dict) and _SUMMARY_KEYS <= set(summary):
            try:
                stored = yaml.safe_load(rd.config_path.read_text(encoding="utf-8"))
                return _CONFIG_SECTIONS <= set(stored) and isinstance(config_from_stored(stored), Config)
            except (MedclfError, TypeError, AttributeError, yaml.YAMLError):
                return False
    return path.parent.name == RunDir.MEMBERS and folder_kind(path.parent.parent) == "ensemble"


def _proves_ensemble(path: Path) -> bool:
    """An ensemble made before markers: its ensemble.json in medclf's format."""
    spec = read_json(path / RunDir.ENSEMBLE) if (path / RunDir.ENSEMBLE).is_file() else None
    return isinstance(spec, dict) and spec.get("format") == ENSEMBLE_FORMAT


def _proves_study(path: Path) -> bool:
    """A study made before markers: its study.json as `medclf study` writes it."""
    summary = read_json(path / RunDir.STUDY) if (path / RunDir.STUDY).is_file() else None
    return isinstance(summary, dict) and {"study", "data", "split"} <= set(summary)


register_recogniser("ensemble", _proves_ensemble)
register_recogniser("run", _proves_run)
register_recogniser("study", _proves_study)


def tag_order(tag: str) -> tuple[int, str]:
    """Sort key for split tags: train, val, test, then the rest (external caches) by name."""
    return ({"train": 0, "val": 1, "test": 2}.get(tag, 3), tag)


def check_tag(tag: str) -> str:
    """A split tag usable in a file name (`test`, `val`, `test@1a2b3c4d`)."""
    if not tag or any(c in tag for c in "/\\") or tag.startswith("."):
        raise MedclfError(f"split name {tag!r} cannot be used in a file name")
    return tag


def config_from_stored(data: dict[str, Any]) -> Config:
    """A stored config (run's config.yaml or a checkpoint's) as a typed Config, retired keys dropped."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in (data or {}).items()}
    for section, keys in _RETIRED_KEYS.items():
        for key in keys:
            if isinstance(data.get(section), dict):
                data[section].pop(key, None)
    return config_from_dict(data)
