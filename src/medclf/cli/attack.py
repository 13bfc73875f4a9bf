"""`medclf attack`: metrics of a run under L-inf FGSM/PGD at several eps (in grey levels, e.g. 1/255)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medclf.cli.common import examples


def register(app: typer.Typer) -> None:
    @app.command("attack", epilog=examples(
        "medclf attack runs/pmnist --method pgd --eps 0.5/255,1/255,2/255 --split val",
        "medclf attack runs/r50 --method fgsm --max-images 500",
    ))
    def attack_cmd(
        run: Path = typer.Argument(..., metavar="RUN", help="Run directory (single model or ensemble)."),
        method: str = typer.Option("pgd", "--method", help="fgsm or pgd."),
        eps: str = typer.Option("0.5/255,1/255,2/255", "--eps",
                                help="Comma-separated L-inf radii in unit grey range; fractions allowed (1/255)."),
        steps: int = typer.Option(10, "--steps", help="PGD iterations (step size 2.5*eps/steps, random start)."),
        split: str = typer.Option("test", "--split", help="train, val or test."),
        data: Optional[Path] = typer.Option(None, "--data", help="Another prepared cache (default: the run's cache)."),
        batch_size: int = typer.Option(32, "--batch-size", help="Images per attack batch."),
        max_images: Optional[int] = typer.Option(None, "--max-images", help="Attack a seeded random subset."),
        n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples for the 95% intervals."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
    ) -> None:
        """Metrics under L-inf FGSM or PGD attacks.

        Writes RUN/robustness.json/.csv/.png and attack_examples_<method>.png and prints the table.
        """
        from medclf.errors import MedclfError
        from medclf.robust.attack_run import attack_run, robustness_table
        from medclf.robust.attacks import parse_eps
        from medclf.runs import RunDir

        if split not in ("train", "val", "test"):
            raise MedclfError(f"--split must be train, val or test, not '{split}'")
        if max_images is not None and max_images < 1:
            raise MedclfError(f"--max-images must be at least 1, got {max_images}")
        entry = attack_run(run, method=method, eps=parse_eps(eps), steps=steps, split=split, data=data,
                           batch_size=batch_size, max_images=max_images, n_boot=n_boot, device=device)
        table = robustness_table([entry])[["eps_255", "accuracy", "f1", "roc_auc", "flip_rate"]]
        point = ("each finding at its own threshold, macro averages" if entry.get("thresholds")
                 else f"threshold {entry['threshold']:.4f}")
        typer.echo(f"{entry['method']} on {entry['split']} (n={entry['n']}, {point}):")
        typer.echo(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        typer.echo(f"written: {Path(run) / RunDir.ROBUSTNESS}")
