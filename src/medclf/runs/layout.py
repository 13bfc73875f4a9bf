"""A run directory's layout: every file name of a run is written here, and nowhere else.

A run directory is what `medclf train` (one model) or `medclf ensemble` (members under `members/<i>/`) leaves;
`evaluate`, `attack`, `ood`, `explain`, `export` and `report` add their files to it. `RunDir` knows where each
file lives and reads the typed ones back (config, data summary, ensemble description, evaluated splits).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from medclf.config import Config, config_from_dict
from medclf.errors import MedclfError
from medclf.io import read_json

ENSEMBLE_FORMAT = "medclf-ensemble"
PLOT_KINDS = ("confusion", "roc", "pr", "calibration")
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
    EXPLAIN_SCORES = "explain_scores.json"
    EXPLAIN_PER_IMAGE = "explain_scores_per_image.csv"
    CONTRASTIVE_HISTORY = "contrastive_history.csv"
    STUDY = "study.json"

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
        return self.path / "model.onnx"

    def export_path(self, suffix: str) -> Path:
        return self.path / f"model{suffix}"

    def predictions(self, tag: str) -> Path:
        """`predictions_<tag>.csv`; tag is a split, or `<split>@<hash8>` for another cache."""
        return self.path / f"predictions_{check_tag(tag)}.csv"

    def metrics(self, tag: str) -> Path:
        return self.path / f"metrics_{check_tag(tag)}.json"

    def plot(self, kind: str, tag: str) -> Path:
        if kind not in PLOT_KINDS:
            raise ValueError(f"unknown plot kind {kind!r}")
        return self.path / f"{kind}_{check_tag(tag)}.png"

    def attack_examples(self, method: str) -> Path:
        return self.path / f"attack_examples_{method}.png"

    def member(self, rel: str | int) -> "RunDir":
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
        found = {p.name[len("metrics_"):-len(".json")]: p for p in self.path.glob("metrics_*.json")}
        if not found and (self.path / self.METRICS).is_file():
            found = {"test": self.path / self.METRICS}
        order = {"train": 0, "val": 1, "test": 2}
        return dict(sorted(found.items(), key=lambda kv: (order.get(kv[0], 3), kv[0])))

    def prediction_tables(self) -> dict[str, Path]:
        """tag -> predictions_<tag>.csv present in the run."""
        return {p.stem[len("predictions_"):]: p for p in sorted(self.path.glob("predictions_*.csv"))}

    def read_metrics(self, tag: str) -> dict[str, Any]:
        return read_json(self.metrics(tag))

    def read_predictions(self, tag: str) -> pd.DataFrame:
        return pd.read_csv(self.predictions(tag))

    def history(self) -> pd.DataFrame:
        return pd.read_csv(self.history_path)


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
