"""`medclf predict`: probabilities for DICOM/PNG/JPEG files or folders."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("predict")
    def predict_cmd(
        run: Path = typer.Argument(..., help="Run directory."),
        inputs: List[Path] = typer.Argument(..., help="Files or folders (DICOM, PNG, JPEG)."),
        out: Optional[Path] = typer.Option(None, "--out", help="CSV to write (default: print)."),
        batch_size: int = typer.Option(32, "--batch-size"),
        engine: str = typer.Option("torch", "--engine",
                                   help="torch (eager PyTorch) or onnx (ONNX Runtime; uses RUN/model.onnx when "
                                        "current, else exports on the fly)."),
    ) -> None:
        """Predict with the run's operating threshold; unreadable files are listed with the reason."""
        from medclf.engine.predict import predict_files

        table = predict_files(run, inputs, out=out, batch_size=batch_size, engine=engine)
        if out is None:
            typer.echo(table.to_csv(index=False), nl=False)
        else:
            typer.echo(f"predictions: {out}")
        bad = table[table["error"].astype(str) != ""]
        for _, row in bad.iterrows():
            typer.echo(f"skipped {row['path']}: {row['error']}", err=True)
