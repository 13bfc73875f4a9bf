"""`medclf study`: train and evaluate a grid of variants over one cache, then compare them."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("study")
    def study_cmd(
        config: Path = typer.Argument(..., help="Study file (YAML), e.g. configs/study_cpu.yaml."),
        out: Optional[Path] = typer.Option(None, "--out", help="Study directory (default: the file's 'out')."),
        data: Optional[Path] = typer.Option(None, "--data", help="Prepared cache (default: the file's 'data')."),
    ) -> None:
        """Run every unfinished variant (rerun to resume), then write comparison.md/.csv/.html in the study dir."""
        from medclf.cli.common import resume_hint_on_interrupt
        from medclf.study import run_study

        hint = "run the same command again to continue (finished variants are kept, the current one resumes)"
        with resume_hint_on_interrupt(lambda: hint):
            summary = run_study(config, out=out, data=data)
        for name, info in summary["variants"].items():
            typer.echo(f"{name}: {info['status']} ({info['dir']})")
        typer.echo(f"comparison: {summary['comparison']}")
