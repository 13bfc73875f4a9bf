"""Start the service: load the run once, then one uvicorn worker on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Callable

from medclf.errors import MedclfError
from medclf.serve.app import (
    DEFAULT_MAX_CONCURRENT,
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_UPLOAD_TIMEOUT_S,
    create_app,
)
from medclf.serve.connections import DEFAULT_HEADER_TIMEOUT_S, DEFAULT_MAX_CONNECTIONS, guarded_protocol
from medclf.serve.predictor import DEFAULT_MAX_MPX, ServeModel

log = logging.getLogger("medclf.serve")


def check_options(host: str, port: int, max_upload_mb: float, max_concurrent: int = DEFAULT_MAX_CONCURRENT,
                  upload_timeout_s: float = DEFAULT_UPLOAD_TIMEOUT_S, max_mpx: float = DEFAULT_MAX_MPX,
                  header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
                  max_connections: int = DEFAULT_MAX_CONNECTIONS) -> None:
    """User errors in the serve options, as one-line `MedclfError`s."""
    if not 0 <= port <= 65535:
        raise MedclfError(f"--port {port}: must be between 0 and 65535")
    for flag, value in (("--max-upload-mb", max_upload_mb), ("--upload-timeout", upload_timeout_s),
                        ("--max-mpx", max_mpx), ("--header-timeout", header_timeout_s)):
        if not value > 0:
            raise MedclfError(f"{flag} {value:g}: must be positive")
    if max_concurrent < 1:
        raise MedclfError(f"--max-concurrent {max_concurrent}: must be at least 1")
    if max_connections < 1:
        raise MedclfError(f"--max-connections {max_connections}: must be at least 1")
    if not host.strip():
        raise MedclfError("--host: empty")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000,
          max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, max_files: int = DEFAULT_MAX_FILES,
          device: str = "auto", log_level: str = "info", max_concurrent: int = DEFAULT_MAX_CONCURRENT,
          upload_timeout_s: float = DEFAULT_UPLOAD_TIMEOUT_S, max_mpx: float = DEFAULT_MAX_MPX,
          header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S, max_connections: int = DEFAULT_MAX_CONNECTIONS,
          engine: str = "torch", on_loaded: Callable[[], None] | None = None) -> None:
    """Serve `run_dir` until interrupted. One worker process: the model is loaded once and requests share it
    (model work runs on the predictor's one model thread; decoding in the threadpool, `max_concurrent`
    requests at a time). A connection must finish its request headers within `header_timeout_s`, and at most
    `max_connections` are open (`medclf.serve.connections`). `engine`: torch, onnx or onnx-int8 (the
    Predictor's backend). `on_loaded` runs once the run is loaded (the CLI's banner: never before a bad RUN's
    error)."""
    import uvicorn

    check_options(host, port, max_upload_mb, max_concurrent, upload_timeout_s, max_mpx, header_timeout_s,
                  max_connections)
    predictor = ServeModel.load(run_dir, device, max_mpx=max_mpx, engine=engine)
    if on_loaded is not None:
        on_loaded()
    app = create_app(predictor, max_upload_mb=max_upload_mb, max_files=max_files, max_concurrent=max_concurrent,
                     upload_timeout_s=upload_timeout_s)
    if not is_loopback(host):
        log.warning("listening on %s: the service has no authentication; anyone who can reach this address "
                    "can upload images", host)
    uvicorn.run(app, host=host, port=port, workers=1, log_level=log_level, server_header=False,
                timeout_keep_alive=5, log_config=log_config(log_level),
                http=guarded_protocol(header_timeout_s, max_connections))  # h11 with a header deadline


def log_config(level: str) -> dict:
    """uvicorn's logging setup plus our `medclf.serve` logger (request sizes and timings, never file names)."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["medclf"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config
