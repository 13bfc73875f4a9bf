"""`medclf ensemble`: train K members and combine them into one run that evaluate/predict/report accept."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("ensemble")
    def ensemble_cmd(
        data: Path = typer.Option(..., "--data", help="Prepared cache directory (medclf prepare ...)."),
        out: Path = typer.Option(..., "--out", help="Ensemble run directory (members go to OUT/members/<i>/)."),
        members: Optional[int] = typer.Option(None, "--members", help="Number of members (default 3; in models "
                                              "mode, the number of --models)."),
        mode: str = typer.Option("partition", "--mode", help="partition | kfold | bootstrap | models."),
        models: Optional[str] = typer.Option(None, "--models", help="models mode: comma-separated architectures, "
                                             "e.g. resnet18,efficientnet_b0."),
        combine: str = typer.Option("mean", "--combine", help="mean | vote | weighted (AUC-proportional)."),
        config: Optional[str] = typer.Option(None, "--config", help="YAML preset for every member."),
        overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. train.epochs=5"),
    ) -> None:
        """Train the members one after another (rerun to resume), then write OUT/ensemble.json."""
        from medclf.cli.common import resume_hint_on_interrupt
        from medclf.config import load_config
        from medclf.ensemble import train_ensemble

        cfg = load_config(config, overrides or [])
        names = [m.strip() for m in models.split(",") if m.strip()] if models else None
        hint = "run the same command again to continue (finished members are kept, the current one resumes)"
        with resume_hint_on_interrupt(lambda: hint):
            run = train_ensemble(cfg, data, out, members=members, mode=mode, models=names, combine=combine)
        typer.echo(f"ensemble: {run}")
