"""`medclf serve`: the web page and JSON API over one run."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve_cmd(
        run: Path = typer.Argument(..., help="Run directory (single model or ensemble)."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; the default is reachable from this "
                                 "machine only. The service has no authentication."),
        port: int = typer.Option(8000, "--port", help="TCP port (0: any free port)."),
        max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", help="Largest request body (all files of "
                                            "one request together), in MiB; larger uploads get HTTP 413."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, mps."),
    ) -> None:
        """Serve a page (drop a DICOM/PNG/JPEG, see probability, decision, heatmap) and a JSON API on RUN."""
        from medclf.serve.server import check_options, serve

        check_options(host, port, max_upload_mb)
        typer.echo(f"medclf serve: http://{host}:{port}/  (API: /api/predict, /api/model, /api/health)")
        serve(run, host=host, port=port, max_upload_mb=max_upload_mb, device=device)
