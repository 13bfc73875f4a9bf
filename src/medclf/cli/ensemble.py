"""`medclf ensemble`: train K members and combine them into one run that evaluate/predict/report accept."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from medclf.cli.common import MLFLOW_HELP, examples, mlflow_overrides, preset_help


def register(app: typer.Typer) -> None:
    @app.command("ensemble", epilog=examples(
        "medclf ensemble --data cache/pmnist --out runs/ens3 --members 3 --mode partition --config pneumoniamnist_cpu",
        "medclf ensemble --data cache/rsna256 --out runs/mix --mode models --models resnet50,densenet121",
    ))
    def ensemble_cmd(
        data: Path = typer.Option(..., "--data", help="Prepared cache directory (medclf prepare ...)."),
        out: Path = typer.Option(..., "--out", help="Ensemble run directory (members go to OUT/members/<i>/)."),
        members: Optional[int] = typer.Option(None, "--members", help="Number of members.  [default: 3; in models "
                                              "mode, the number of --models]"),
        mode: str = typer.Option("partition", "--mode", help="partition, kfold, bootstrap or models."),
        models: Optional[str] = typer.Option(None, "--models", help="models mode: comma-separated architectures, "
                                             "e.g. resnet18,efficientnet_b0."),
        combine: str = typer.Option("mean", "--combine", help="mean, vote or weighted (AUC-proportional)."),
        config: Optional[str] = typer.Option(None, "--config", help=preset_help("YAML preset for every member")),
        mlflow: Optional[str] = typer.Option(None, "--mlflow", metavar="URI", help=MLFLOW_HELP),
        overrides: Optional[List[str]] = typer.Argument(None, metavar="KEY=VALUE",
                                                        help="key=value config overrides, e.g. train.epochs=5"),
    ) -> None:
        """Train K models and combine them into one run.

        Members train one after another (rerun to resume), then OUT/ensemble.json is written; evaluate,
        predict, report and serve accept the ensemble like a single run.
        """
        from medclf.cli.common import resume_hint_on_interrupt
        from medclf.config import load_config
        from medclf.ensemble import train_ensemble

        cfg = load_config(config, [*(overrides or []), *mlflow_overrides(mlflow)])
        names = [m.strip() for m in models.split(",") if m.strip()] if models else None
        hint = "run the same command again to continue (finished members are kept, the current one resumes)"
        with resume_hint_on_interrupt(lambda: hint):
            run = train_ensemble(cfg, data, out, members=members, mode=mode, models=names, combine=combine)
        typer.echo(f"ensemble: {run}")
