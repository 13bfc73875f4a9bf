"""`medclf export`: a run (single model or ensemble) as ONNX or TorchScript, with a parity check."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medclf.cli.common import FORCE_OUT_HELP, examples


def register(app: typer.Typer) -> None:
    @app.command("export", epilog=examples(
        "medclf export runs/pmnist --format onnx --int8",
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
        int8: bool = typer.Option(False, "--int8", help="Also write RUN/model.int8.onnx: model ops quantised to "
                                  "int8 (ONNX Runtime, static QDQ), compared with fp32 on --split and refused when "
                                  "it loses accuracy; predict/serve/evaluate --engine onnx-int8 use it."),
        calibrate: Optional[Path] = typer.Option(None, "--calibrate", metavar="CACHE", help="--int8: calibrate "
                                                 "and compare on this prepared cache (default: the run's own)."),
        split: str = typer.Option("val", "--split", help="--int8: the split to calibrate and compare on."),
        max_auc_drop: float = typer.Option(0.005, "--max-auc-drop", help="--int8: refuse when the int8 ROC AUC "
                                           "is lower than fp32's by more than this (negative: must improve)."),
    ) -> None:
        """Export a run as ONNX or TorchScript.

        The graph takes the normalised B x C x H x W input (B dynamic) and outputs probabilities.
        """
        from medclf.errors import MedclfError
        from medclf.export import export_run

        if int8 and format != "onnx":
            raise MedclfError(f"--int8 needs --format onnx, not '{format}'")
        result = export_run(run, format=format, out=out, n_check=check, tolerance=tolerance, progress=True,
                            force=force)
        typer.echo(result.summary())
        if int8:
            from medclf.export_int8 import export_int8

            quantized = export_int8(run, calibrate=calibrate, split=split, max_auc_drop=max_auc_drop, progress=True)
            if quantized.note:
                typer.echo(quantized.note, err=True)
            typer.echo(quantized.summary())
