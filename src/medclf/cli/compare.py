"""`medclf compare`: a table of several runs' metrics on the same images, with paired tests."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("compare")
    def compare_cmd(
        runs: List[Path] = typer.Argument(..., help="Run directories evaluated on the same split; the first is "
                                          "the reference of the paired tests."),
        split: str = typer.Option("test", "--split", help="The evaluated split to compare (train, val or test)."),
        out: Optional[Path] = typer.Option(None, "--out", help="Markdown file to write (with .csv and .html "
                                           "beside it); the table is printed either way."),
        n_boot: int = typer.Option(1000, "--n-boot", help="Paired bootstrap resamples."),
        seed: int = typer.Option(0, "--seed", help="Seed of the paired bootstrap."),
    ) -> None:
        """Metrics with 95% intervals, and AUC/F1 differences against the first run (paired bootstrap)."""
        from medclf.compare import compare_runs, comparison_markdown

        frame = compare_runs(runs, split=split, out=out, n_boot=n_boot, seed=seed)
        typer.echo(comparison_markdown(frame), nl=False)
        if out is not None:
            typer.echo(f"comparison: {out} (+ {out.with_suffix('.csv').name}, {out.with_suffix('.html').name})")
