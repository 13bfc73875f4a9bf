"""`medclf study`: train and evaluate a grid of variants over one cache, then compare them."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medclf.cli.common import MLFLOW_HELP, examples, mlflow_overrides


def register(app: typer.Typer) -> None:
    @app.command("study", epilog=examples(
        "medclf study configs/study_cpu.yaml",
        "medclf study configs/study_seed.yaml --data cache/rsna256 --out runs/study_seed",
    ))
    def study_cmd(
        config: Path = typer.Argument(..., metavar="STUDY_FILE",
                                      help="Study file (YAML), e.g. configs/study_cpu.yaml."),
        out: Optional[Path] = typer.Option(None, "--out", help="Study directory (default: the file's 'out')."),
        data: Optional[Path] = typer.Option(None, "--data", help="Prepared cache (default: the file's 'data')."),
        mlflow: Optional[str] = typer.Option(None, "--mlflow", metavar="URI",
                                             help=MLFLOW_HELP + " The study is the parent run, each variant a child."),
    ) -> None:
        """Train and evaluate a grid of variants, then compare them.

        Runs every unfinished variant (rerun to resume), then writes comparison.md/.csv/.html in the study
        folder.
        """
        from medclf.cli.common import resume_hint_on_interrupt
        from medclf.study import run_study

        hint = "run the same command again to continue (finished variants are kept, the current one resumes)"
        with resume_hint_on_interrupt(lambda: hint):
            summary = run_study(config, out=out, data=data, overrides=mlflow_overrides(mlflow))
        for name, info in summary["variants"].items():
            typer.echo(f"{name}: {info['status']} ({info['dir']})")
        typer.echo(f"comparison: {summary['comparison']}")
