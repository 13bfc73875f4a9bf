"""MLflow backend: one MLflow run per medclf run folder, remembered in the folder's tracking.json.

The store is `track.mlflow_uri`, else $MLFLOW_TRACKING_URI, else a sqlite file in the user's folder
(~/.medclf/mlflow.db, artifacts beside it): no server needed, and `mlflow ui --backend-store-uri` shows it.
A `mlflow server` URI (http://...) works the same.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from medclf.config import Config
from medclf.errors import MedclfError
from medclf.io import read_json, write_json
from medclf.runs.layout import RunDir

DEFAULT_HOME = Path("~/.medclf")
_BATCH = 100  # MLflow takes at most 100 params (and 1000 metrics) per log_batch call


def mlflow_module():
    try:
        import mlflow
    except ImportError:
        raise MedclfError("MLflow logging (track.mlflow=true) needs the 'mlflow' package: "
                          "pip install 'medclf[track]' (or pip install mlflow)") from None
    plain_mlflow_logs()
    return mlflow


class PlainFormatter(logging.Formatter):
    """MLflow's log format without its colours: its formatter wraps some warnings in ANSI escape codes, which a
    log file, a notebook or a CI page shows as raw `\x1b[31m` text."""

    ANSI = re.compile(r"\x1b\[[0-9;]*m")

    def format(self, record: logging.LogRecord) -> str:
        return self.ANSI.sub("", super().format(record))


def plain_mlflow_logs() -> None:
    """Give the handlers MLflow installs on its own loggers the plain formatter (same line format)."""
    for name in ("mlflow", "alembic", "sqlalchemy.engine", "huey"):
        for handler in logging.getLogger(name).handlers:
            if not isinstance(handler.formatter, PlainFormatter):
                handler.setFormatter(PlainFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                                    "%Y/%m/%d %H:%M:%S"))


def tracking_uri(cfg: Config) -> str:
    """Where runs are logged: the config's URI, the MLflow environment variable, or the local sqlite default."""
    if cfg.track.mlflow_uri:
        return cfg.track.mlflow_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    home = DEFAULT_HOME.expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'mlflow.db'}"


def artifact_root(uri: str) -> str | None:
    """A local sqlite store keeps its artifacts in `mlartifacts/` beside the database (MLflow would otherwise
    put them in the current folder); a server decides for itself."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return None


def recorded_run(run_dir: str | Path) -> dict[str, Any] | None:
    """The MLflow run a folder was logged to ({uri, run_id, experiment_id, ...}), or None."""
    path = RunDir(run_dir).tracking_path
    return (read_json(path).get("mlflow") if path.is_file() else None) or None


class MlflowBackend:
    def __init__(self, client, uri: str, run_id: str, run_dir: Path) -> None:
        self.client, self.uri, self.run_id, self.run_dir = client, uri, run_id, run_dir

    @classmethod
    def open(cls, run_dir: Path, cfg: Config, kind: str, parent: tuple[str, str, str] | None,
             resume: bool) -> MlflowBackend:
        mlflow = mlflow_module()
        uri = tracking_uri(cfg)
        client = mlflow.tracking.MlflowClient(tracking_uri=uri)
        recorded = recorded_run(run_dir)
        if resume and recorded and recorded.get("uri") == uri:
            client.update_run(recorded["run_id"], status="RUNNING")
            return cls(client, uri, recorded["run_id"], run_dir)
        experiment_id = _experiment_id(client, cfg.track.experiment, uri)
        tags = {"medclf.kind": kind, "medclf.run_dir": str(Path(run_dir).resolve())}
        if parent is not None and parent[0] == uri:
            tags["mlflow.parentRunId"] = parent[1]
        run = client.create_run(experiment_id, tags=tags, run_name=Path(run_dir).name)
        write_json(RunDir(run_dir).tracking_path, {"mlflow": {
            "uri": uri, "run_id": run.info.run_id, "experiment_id": experiment_id, "kind": kind}})
        return cls(client, uri, run.info.run_id, run_dir)

    def parent_id(self) -> tuple[str, str]:
        return self.uri, self.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        logged = self.client.get_run(self.run_id).data.params  # a resumed run has them already (they cannot change)
        items = [Param(k, str(v)) for k, v in params.items() if k not in logged]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + _BATCH])

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for k, v in values.items()]
        for i in range(0, len(items), 10 * _BATCH):
            self.client.log_batch(self.run_id, metrics=items[i:i + 10 * _BATCH])

    def log_image(self, name: str, path: Path, step: int) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path="plots")

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=folder)

    def log_model(self, run_dir: Path) -> None:
        """The run as an MLflow pyfunc model: `mlflow.pyfunc.load_model(uri).predict(images)` gives the
        Predictor's table (probabilities, decision at the run's threshold, OOD flag)."""
        from medclf import __version__
        from medclf.tracking.pyfunc import MedclfModel

        mlflow = mlflow_module()
        previous = mlflow.get_tracking_uri()
        with tempfile.TemporaryDirectory() as staging:
            for rel in RunDir(run_dir).inference_files():
                target = Path(staging) / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(run_dir) / rel, target)
            try:
                mlflow.set_tracking_uri(self.uri)  # pyfunc.log_model only speaks to the global tracking URI
                with mlflow.start_run(run_id=self.run_id):
                    info = mlflow.pyfunc.log_model(name="model", python_model=MedclfModel(),
                                                   artifacts={"run": staging},
                                                   pip_requirements=[f"medclf=={__version__}"])
            finally:
                mlflow.set_tracking_uri(previous)
        path = RunDir(run_dir).tracking_path
        record = read_json(path)
        record["mlflow"]["model_uri"] = info.model_uri
        write_json(path, record)

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)


def _experiment_id(client, name: str, uri: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=artifact_root(uri))
