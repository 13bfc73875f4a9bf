"""Experiment tracking: TensorBoard event files in the run (on by default) and MLflow runs (when asked).

Workflows talk to one `Tracker`; it fans out to the enabled backends and is a no-op when none is. A run folder
remembers its MLflow run in `tracking.json`, so `evaluate` (and a resumed `train`) log into the run that trained
it; `study` and `ensemble` open a parent run (`parent_run`) whose children are their variants or members.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import re
from pathlib import Path
from typing import Any, Iterator, Protocol

from medclf.config import Config, flat_keys

# the parent MLflow run (study or ensemble) that runs started now belong to: (uri, run id, kind)
_PARENT: contextvars.ContextVar[tuple[str, str, str] | None] = contextvars.ContextVar("medclf_parent", default=None)
# metrics.json keys that describe how the figures were made, not a measurement
_NOT_MEASURED = ("ci", "n_boot", "positive_index")


class Backend(Protocol):
    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_scalars(self, values: dict[str, float], step: int) -> None: ...
    def log_image(self, name: str, path: Path, step: int) -> None: ...
    def log_artifact(self, path: Path, folder: str | None = None) -> None: ...
    def log_model(self, run_dir: Path) -> None: ...
    def close(self, status: str) -> None: ...


class Tracker:
    """What a workflow logs: config, per-epoch rows, final metrics with intervals, figures, files, the model."""

    def __init__(self, backends: list[Backend]) -> None:
        self.backends = backends

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, kind, error, tb) -> None:
        if kind is None:
            self.close("FINISHED")
        else:
            self.close("KILLED" if issubclass(kind, KeyboardInterrupt) else "FAILED")

    def log_config(self, cfg: Config) -> None:
        params = flat_keys(cfg.to_dict())
        for b in self.backends:
            b.log_params(params)

    def log_epoch(self, row: dict[str, Any]) -> None:
        """One history.csv row; its `epoch` is the step, `seconds` is not a metric."""
        values = {k: v for k, v in row.items() if k not in ("epoch", "seconds")}
        self.log_scalars(values, int(row["epoch"]))

    def log_scalars(self, values: dict[str, Any], step: int = 0) -> None:
        clean = {k: float(v) for k, v in values.items() if _is_number(v)}
        for b in self.backends:
            b.log_scalars(clean, step)

    def log_metrics(self, metrics: dict[str, Any], tag: str, step: int = 0) -> None:
        """A metrics.json dict as `<tag>/<key>`, each interval as `<tag>/<key>_ci_low` and `_ci_high`."""
        prefix = tag.replace("@", ".")  # '@' is not allowed in MLflow metric names
        values = {f"{prefix}/{k}": v for k, v in metrics.items() if k not in _NOT_MEASURED}
        for key, interval in (metrics.get("ci") or {}).items():
            if interval:
                values[f"{prefix}/{key}_ci_low"], values[f"{prefix}/{key}_ci_high"] = interval
        self.log_scalars(values, step)

    def log_subgroups(self, result: dict[str, Any], tag: str, step: int = 0) -> None:
        """A subgroups.json dict (`medclf evaluate --by`) as `<tag>/subgroups/<column>/<group>/<key>`: `n`, `n_pos`
        for every group, `roc_auc` with `_ci_low`/`_ci_high` for groups large enough to measure."""
        prefix = tag.replace("@", ".")
        values: dict[str, Any] = {}
        for column, rows in result.get("columns", {}).items():
            for row in rows:
                key = f"{prefix}/subgroups/{metric_name(column)}/{metric_name(row['group'])}"
                values.update({f"{key}/n": row["n"], f"{key}/n_pos": row["n_pos"]})
                measured = row.get("metrics") or {}
                interval = (measured.get("ci") or {}).get("roc_auc")
                values[f"{key}/roc_auc"] = measured.get("roc_auc")
                if interval:
                    values[f"{key}/roc_auc_ci_low"], values[f"{key}/roc_auc_ci_high"] = interval
        self.log_scalars(values, step)

    def log_image(self, name: str, path: Path, step: int = 0) -> None:
        if Path(path).is_file():
            for b in self.backends:
                b.log_image(name, Path(path), step)

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        if Path(path).exists():
            for b in self.backends:
                b.log_artifact(Path(path), folder)

    def log_model(self, run_dir: Path) -> None:
        for b in self.backends:
            b.log_model(Path(run_dir))

    def close(self, status: str = "FINISHED") -> None:
        for b in self.backends:
            b.close(status)
        self.backends = []


def check_trackers(cfg: Config) -> None:
    """Fail before any work when a tracker the config asks for is not installed."""
    if cfg.track.mlflow:
        from medclf.tracking.mlflow_backend import mlflow_module

        mlflow_module()


def open_tracker(run_dir: str | Path, cfg: Config, kind: str = "train", resume: bool = True) -> Tracker:
    """The tracker of one run folder, with the backends `cfg.track` enables.

    MLflow: the run recorded in the folder's tracking.json is continued when `resume` (a resumed train, an
    evaluate); otherwise a new one is started, a child of the current `parent_run` if any.
    """
    run_dir = Path(run_dir)
    backends: list[Backend] = []
    if cfg.track.tensorboard:
        from medclf.tracking.tensorboard import TensorBoardBackend

        backends.append(TensorBoardBackend(run_dir))
    if cfg.track.mlflow:
        from medclf.tracking.mlflow_backend import MlflowBackend

        backends.append(MlflowBackend.open(run_dir, cfg, kind, parent=_PARENT.get(), resume=resume))
    return Tracker(backends)


def with_mlflow(cfg: Config, uri: str, tensorboard: bool | None = None) -> Config:
    """`cfg` logging to the MLflow store at `uri` (and to TensorBoard as `tensorboard` says, else as it was)."""
    track = dataclasses.replace(cfg.track, mlflow=True, mlflow_uri=uri,
                                tensorboard=cfg.track.tensorboard if tensorboard is None else tensorboard)
    return dataclasses.replace(cfg, track=track)


def open_run_tracker(run_dir: str | Path, cfg: Config, mlflow_uri: str | None = None,
                     tensorboard: bool | None = None, kind: str = "evaluate") -> Tracker:
    """The tracker a later stage (evaluate, report) of a trained run logs to: its TensorBoard folder when the run
    logs there, and MLflow in the store `mlflow_uri` names (evaluate --mlflow), else the one tracking.json
    records (the run that trained it), else as the run's config says."""
    from medclf.tracking.mlflow_backend import recorded_run

    recorded = recorded_run(run_dir)
    uri = mlflow_uri or (recorded["uri"] if recorded is not None else None)
    if uri is not None:
        cfg = with_mlflow(cfg, uri, tensorboard)
    elif tensorboard is not None:
        cfg = dataclasses.replace(cfg, track=dataclasses.replace(cfg.track, tensorboard=tensorboard))
    return open_tracker(run_dir, cfg, kind=kind, resume=True)


def log_file_to_trained_run(run_dir: str | Path, path: str | Path, folder: str | None = None) -> None:
    """A file made later from a run (its report) into the MLflow run that trained it, when tracking.json names
    one; nothing otherwise (TensorBoard shows numbers and images, not documents)."""
    from medclf.tracking.mlflow_backend import recorded_run

    if recorded_run(run_dir) is None:
        return
    with open_run_tracker(run_dir, Config(), tensorboard=False, kind="report") as tracker:
        tracker.log_artifact(Path(path), folder)


@contextlib.contextmanager
def parent_run(out_dir: str | Path, cfg: Config, kind: str) -> Iterator[Tracker]:
    """A study's or an ensemble's own run; MLflow runs started inside it are its children."""
    with open_tracker(out_dir, cfg, kind=kind, resume=True) as tracker:
        mlflow_ids = [b.parent_id() for b in tracker.backends if hasattr(b, "parent_id")]
        token = _PARENT.set((*mlflow_ids[0], kind)) if mlflow_ids else None
        try:
            yield tracker
        finally:
            if token is not None:
                _PARENT.reset(token)


def parent_kind() -> str | None:
    """'study' or 'ensemble' while inside their parent run, else None."""
    parent = _PARENT.get()
    return parent[2] if parent else None


def metric_name(text: str) -> str:
    """A group or column name as MLflow accepts it in a metric name (ASCII letters, digits, `_-. /`): an age band
    `[40, 60)` reads `40-60`, anything else outside the set becomes `_`."""
    text = re.sub(r"^[\[(](.*)[\])]$", r"\1", str(text).strip()).replace(", ", "-")
    return re.sub(r"[^A-Za-z0-9_\-. ]+", "_", text, flags=re.ASCII) or "_"


def _is_number(value: Any) -> bool:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    return number == number and not isinstance(value, bool)  # NaN (an undefined metric) is not logged
