"""`medclf serve`: the web page and JSON API over one run."""

from __future__ import annotations

from pathlib import Path

import typer

from medclf.cli.common import examples


def register(app: typer.Typer) -> None:
    @app.command("serve", epilog=examples(
        "medclf serve runs/pmnist",
        "medclf serve runs/r50 --port 8080 --device cuda",
    ))
    def serve_cmd(
        run: Path = typer.Argument(..., metavar="RUN", help="Run directory (single model or ensemble)."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; the default is reachable from this "
                                 "machine only. The service has no authentication."),
        port: int = typer.Option(8000, "--port", help="TCP port (0: any free port)."),
        max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", help="Largest request body (all files of "
                                            "one request together; the web page sends each file as its own "
                                            "request), in MiB; larger uploads get HTTP 413."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, mps."),
        max_concurrent: int = typer.Option(2, "--max-concurrent", help="Requests decoded and predicted at once; "
                                           "the others wait (bounds the memory of all requests together)."),
        upload_timeout: float = typer.Option(60.0, "--upload-timeout", help="Seconds a client has to send a "
                                             "whole request body; a slower or stalled upload gets HTTP 408."),
        max_mpx: float = typer.Option(24.0, "--max-mpx", help="Largest image accepted, in megapixels (2^20 "
                                      "pixels), checked from the file's header before decoding."),
        header_timeout: float = typer.Option(10.0, "--header-timeout", help="Seconds a connection has to send its "
                                             "request line and headers; a slower one is closed (slow-loris)."),
        max_connections: int = typer.Option(256, "--max-connections", help="Open connections at most; beyond "
                                            "that the one waiting longest for its headers is closed."),
        engine: str = typer.Option("torch", "--engine", help="torch, onnx, or onnx-int8 (RUN/model.int8.onnx "
                                   "from `export --int8`, at its own threshold)."),
    ) -> None:
        """A web page and JSON API over a run.

        Drop a DICOM/PNG/JPEG on the page to see the probability, the decision and a heat map.
        """
        from medclf.serve.server import check_options, serve

        check_options(host, port, max_upload_mb, max_concurrent, upload_timeout, max_mpx, header_timeout,
                      max_connections)
        serve(run, host=host, port=port, max_upload_mb=max_upload_mb, device=device, max_concurrent=max_concurrent,
              upload_timeout_s=upload_timeout, max_mpx=max_mpx, header_timeout_s=header_timeout,
              max_connections=max_connections, engine=engine, on_loaded=lambda: typer.echo(
                  f"medclf serve: http://{host}:{port}/  (API: /api/predict, /api/model, /api/health)"))
