"""`medclf train`: train one model on a prepared cache."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        data: Path = typer.Option(..., "--data", help="Prepared cache directory (medclf prepare ...)."),
        out: Path = typer.Option(..., "--out", help="Run directory to write."),
        config: Optional[str] = typer.Option(None, "--config", help="YAML preset: a path or a name in configs/."),
        resume: bool = typer.Option(False, "--resume", help="Continue from OUT/last.pt."),
        overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. train.epochs=5"),
    ) -> None:
        """Train a classifier; writes config.yaml, history.csv, curves.png, best.pt and last.pt."""
        from medclf.config import load_config
        from medclf.engine.train import train

        cfg = load_config(config, overrides or [])
        run = train(cfg, data, out, resume=resume)
        typer.echo(f"run: {run}")
