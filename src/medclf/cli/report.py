"""`medclf report`: one self-contained HTML file for a run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medclf.cli.common import FORCE_OUT_HELP, examples


def register(app: typer.Typer) -> None:
    @app.command("report", epilog=examples(
        "medclf report runs/pmnist",
        "medclf report runs/r50 --out ~/reports/r50.html",
    ))
    def report_cmd(
        run: Path = typer.Argument(..., metavar="RUN", help="Run directory."),
        out: Optional[Path] = typer.Option(None, "--out", help="HTML file (default RUN/report.html)."),
        force: bool = typer.Option(False, "--force", help=FORCE_OUT_HELP),
    ) -> None:
        """One self-contained HTML report of a run.

        Data, config, curves, metrics with intervals, confusion matrix, ROC/PR and calibration.
        """
        from medclf.errors import MedclfError
        from medclf.report.html import build_report
        from medclf.runs.layout import RunDir

        if not RunDir(run).config_path.exists():
            raise MedclfError(f"{run}: not a run directory (no {RunDir.CONFIG})")
        path = build_report(run, out, force=force)
        typer.echo(f"report: {path}")
