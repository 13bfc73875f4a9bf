"""`medclf report`: one self-contained HTML file for a run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report_cmd(
        run: Path = typer.Argument(..., help="Run directory."),
        out: Optional[Path] = typer.Option(None, "--out", help="HTML file (default RUN/report.html)."),
    ) -> None:
        """Write RUN/report.html: data, config, curves, metrics with intervals, confusion, ROC/PR, calibration."""
        from medclf.errors import MedclfError
        from medclf.report.html import build_report

        if not (run / "config.yaml").exists():
            raise MedclfError(f"{run}: not a run directory (no config.yaml)")
        path = build_report(run, out)
        typer.echo(f"report: {path}")
