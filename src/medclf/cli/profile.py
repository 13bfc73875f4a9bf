"""`medclf profile`: parameters, FLOPs, peak memory and images/s of models, as Markdown + CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medclf.cli.common import examples


def register(app: typer.Typer) -> None:
    @app.command("profile", epilog=examples(
        "medclf profile --models resnet50,vit_b_16 --size 224",
        "medclf profile --models resnet18,timm:vit_small_patch16_224 --device cpu --out ~/profile",
    ))
    def profile_cmd(
        models: str = typer.Option("resnet50,vit_b_16", "--models",
                                   help="Comma-separated model names (registry names or timm:<name>)."),
        size: int = typer.Option(224, "--size", help="Square input size."),
        batch: int = typer.Option(8, "--batch", help="Batch size of the timed steps."),
        steps: int = typer.Option(3, "--steps", help="Timed steps per mode (after one warm-up step)."),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
        out: Optional[Path] = typer.Option(None, "--out",
                                           help="Write OUT.md and OUT.csv (the table is printed either way)."),
        force: bool = typer.Option(False, "--force", help="Replace existing OUT.md / OUT.csv (a symbolic link is "
                                   "refused either way)."),
    ) -> None:
        """Size and speed of models.

        Parameters, FLOPs per image, peak memory and images/s of a training step and of inference.
        """
        from medclf.profile import profile_models, to_markdown

        table = profile_models(models.split(","), size=size, batch=batch, steps=steps, device=device, out=out,
                               force=force)
        typer.echo(to_markdown(table), nl=False)
        if out is not None:
            typer.echo(f"written: {Path(out).with_suffix('.md')} and {Path(out).with_suffix('.csv')}", err=True)
