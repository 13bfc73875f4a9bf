"""`medclf compare`: a table of several runs' metrics on the same images, with paired tests."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from medclf.cli.common import examples


def register(app: typer.Typer) -> None:
    @app.command("compare", epilog=examples(
        "medclf compare runs/pmnist runs/ens3 --split val --out runs/single_vs_ens3.md",
        "medclf compare runs/r50 runs/vit --data cache/external",
    ))
    def compare_cmd(
        runs: List[Path] = typer.Argument(..., metavar="RUN", help="Run directories evaluated on the same split; "
                                          "the first is the reference of the paired tests."),
        split: str = typer.Option("test", "--split", help="The evaluated split to compare (train, val or test)."),
        data: Optional[Path] = typer.Option(None, "--data", help="Compare the evaluations of this prepared cache "
                                            "(an external test set: medclf evaluate RUN --data CACHE) instead "
                                            "of each run's own cache."),
        out: Optional[Path] = typer.Option(None, "--out", help="Markdown file to write (with .csv and .html "
                                           "beside it); the table is printed either way."),
        n_boot: int = typer.Option(1000, "--n-boot", help="Paired bootstrap resamples."),
        force: bool = typer.Option(False, "--force", help="Replace existing --out files (a symbolic link is "
                                   "refused either way)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the paired bootstrap."),
    ) -> None:
        """Compare runs evaluated on the same images.

        Metrics with 95% intervals, and AUC/F1 differences against the first run (paired bootstrap); K-class and
        multilabel runs add macro ROC AUC (one-vs-rest) and its paired difference.
        """
        from medclf.compare import compare_runs, comparison_markdown

        frame = compare_runs(runs, split=split, out=out, n_boot=n_boot, seed=seed, data=data, force=force)
        typer.echo(comparison_markdown(frame), nl=False)
        if out is not None:
            typer.echo(f"comparison: {out} (+ {out.with_suffix('.csv').name}, {out.with_suffix('.html').name})")
