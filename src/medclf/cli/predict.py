"""`medclf predict`: probabilities for DICOM/PNG/JPEG files or folders."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from medclf.cli.common import FORCE_OUT_HELP, echo_skipped, examples


def register(app: typer.Typer) -> None:
    @app.command("predict", epilog=examples(
        "medclf predict runs/pmnist scans/ --out runs/predictions.csv",
        "medclf predict runs/r50 study1.dcm study2.png --engine onnx",
    ))
    def predict_cmd(
        run: Path = typer.Argument(..., metavar="RUN", help="Run directory."),
        inputs: List[Path] = typer.Argument(..., metavar="INPUT", help="Files or folders (DICOM, PNG, JPEG)."),
        out: Optional[Path] = typer.Option(None, "--out", help="CSV to write (default: print)."),
        force: bool = typer.Option(False, "--force", help=FORCE_OUT_HELP),
        batch_size: int = typer.Option(32, "--batch-size", help="Images per forward pass."),
        engine: str = typer.Option("torch", "--engine",
                                   help="torch (eager PyTorch) or onnx (ONNX Runtime; uses RUN/model.onnx when "
                                        "current, else exports on the fly) or onnx-int8 (RUN/model.int8.onnx "
                                        "from `export --int8`, at its own threshold)."),
    ) -> None:
        """Probabilities and decisions for DICOM/PNG/JPEG files.

        Decisions use the run's operating threshold; unreadable files are listed with the reason.
        """
        from medclf.engine.predict import predict_files

        table = predict_files(run, inputs, out=out, batch_size=batch_size, engine=engine, force=force)
        if out is None:
            typer.echo(table.to_csv(index=False), nl=False)
        else:
            typer.echo(f"predictions: {out}")
        bad = table[table["error"].astype(str) != ""]
        for _, row in bad.iterrows():
            echo_skipped(row["path"], row["error"])
