"""`medclf demo`: prepare, train, evaluate and report on a small synthetic dataset in the RSNA layout."""

from __future__ import annotations

from pathlib import Path

import typer

from medclf.cli.common import examples


def register(app: typer.Typer) -> None:
    @app.command("demo", epilog=examples(
        "medclf demo",
        "medclf demo --out /tmp/medclf-demo --patients 320",
    ))
    def demo_cmd(
        out: Path = typer.Option(Path("demo_out"), "--out", help="Folder for the synthetic data, cache and run."),
        patients: int = typer.Option(160, "--patients", help="Synthetic patients to generate."),
    ) -> None:
        """Prepare, train, evaluate and report on synthetic data, in a few CPU minutes.

        Synthetic RSNA-layout DICOMs -> prepare -> train -> evaluate -> report.
        """
        from medclf.demo import run_demo

        run_demo(out, n_patients=patients)
