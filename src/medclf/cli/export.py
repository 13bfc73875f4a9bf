"""`medclf export`: a run (single model or ensemble) as ONNX or TorchScript, with a parity check."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medclf.cli.common import FORCE_OUT_HELP, examples


def register(app: typer.Typer) -> None:
    @app.command("export", epilog=examples(
        "medclf export runs/pmnist --format onnx",
        "medclf export runs/ens3 --format torchscript --out ~/models/ens3.pt",
    ))
    def export_cmd(
        run: Path = typer.Argument(..., metavar="RUN", help="Run directory (single model or ensemble)."),
        format: str = typer.Option("onnx", "--format", help="onnx or torchscript."),
        out: Optional[Path] = typer.Option(None, "--out", help="File to write (default RUN/model.onnx or "
                                                                 "RUN/model.torchscript.pt)."),
        check: int = typer.Option(8, "--check", min=1, help="Images for the parity check against eager PyTorch."),
        tolerance: float = typer.Option(1e-3, "--tolerance", help="Max allowed |probability difference|."),
        force: bool = typer.Option(False, "--force", help=FORCE_OUT_HELP),
    ) -> None:
        """Export a run as ONNX or TorchScript.

        The graph takes the normalised B x C x H x W input (B dynamic) and outputs probabilities.
        """
        from medclf.export import export_run

        result = export_run(run, format=format, out=out, n_check=check, tolerance=tolerance, progress=True,
                            force=force)
        typer.echo(result.summary())
