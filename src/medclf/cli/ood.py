"""`medclf ood`: how well MSP, energy and Mahalanobis scores tell the run's data from another set; stores a detector."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medclf.cli.common import examples


def register(app: typer.Typer) -> None:
    @app.command("ood", epilog=examples(
        "medclf ood runs/pmnist --ood cache/other_images --split val",
        "medclf ood runs/pmnist --ood noise --no-store",
    ))
    def ood_cmd(
        run: Path = typer.Argument(..., metavar="RUN", help="Run directory."),
        ood: str = typer.Option(..., "--ood", help="Prepared cache of OOD images, or 'noise' / 'natural' (synthetic)."),
        split: str = typer.Option("test", "--split", help="In-distribution split to compare with (train, val, test)."),
        data: Optional[Path] = typer.Option(None, "--data", help="In-distribution cache (default: the run's cache)."),
        accept_rate: float = typer.Option(0.95, "--accept-rate",
                                          help="Share of validation images the threshold accepts."),
        store: bool = typer.Option(True, "--store/--no-store",
                                   help="Refit the Mahalanobis detector on the run's training split and save it "
                                        "into best.pt (training already stored one)."),
        fit_max: int = typer.Option(5000, "--fit-max", help="At most this many training images fit the detector."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
    ) -> None:
        """Out-of-distribution scores against another image set.

        Writes RUN/ood.json and ood.csv (AUROC, FPR at 95% TPR per score) and prints the table.
        """
        from medclf.errors import MedclfError
        from medclf.robust.ood_run import ood_run, ood_table

        if split not in ("train", "val", "test"):
            raise MedclfError(f"--split must be train, val or test, not '{split}'")
        if fit_max < 2:
            raise MedclfError(f"--fit-max must be at least 2, got {fit_max}")
        entry = ood_run(run, ood, split=split, data=data, store=store, accept_rate=accept_rate,
                        fit_max=fit_max, device=device)
        typer.echo(f"{entry['split']} (n={entry['n_in']}) vs {entry['name']} (n={entry['n_out']}):")
        typer.echo(ood_table([entry])[["score", "auroc", "fpr95"]].to_string(index=False,
                                                                             float_format=lambda v: f"{v:.4f}"))
        for name, why in entry["skipped"].items():
            typer.echo(f"skipped {name}: {why}", err=True)
        stored = entry.get("stored")
        if stored and stored.get("saved"):
            typer.echo(f"stored {stored['score']} detector in best.pt (threshold {stored['threshold']:.4g}, "
                       f"accepts {stored['val_accepted']:.1%} of val)")
        elif stored:
            typer.echo(f"detector not stored: {stored['reason']}", err=True)
