"""`medclf explain`: heat-map overlays for images, or scores of the maps against a cache's boxes."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from medclf.cli.common import echo_skipped, examples


def register(app: typer.Typer) -> None:
    @app.command("explain", epilog=examples(
        "medclf explain runs/pmnist scans/ --method gradcam++ --out runs/pmnist/overlays",
        "medclf explain runs/r50 --data cache/rsna256 --split test --score",
    ))
    def explain_cmd(
        run: Path = typer.Argument(..., metavar="RUN", help="Run directory (single model or ensemble)."),
        inputs: Optional[List[Path]] = typer.Argument(None, metavar="INPUT",
                                                      help="Files or folders (DICOM, PNG, JPEG)."),
        method: str = typer.Option("gradcam", "--method", help="gradcam, gradcam++, scorecam, eigencam, "
                                   "featuremaps; rollout for ViTs."),
        out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default RUN/explain for images, "
                                           "RUN for --score)."),
        data: Optional[Path] = typer.Option(None, "--data", help="Prepared cache with boxes (with --score)."),
        split: str = typer.Option("test", "--split", help="train, val, test, or all (with --score)."),
        score: bool = typer.Option(False, "--score", help="Score the maps against the cache's boxes."),
        methods: Optional[str] = typer.Option(None, "--methods", help="Comma-separated methods to score "
                                              "(default: every method that applies to the model)."),
        n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples for the 95% intervals."),
        faithfulness: bool = typer.Option(True, "--road/--no-road",
                                          help="Also compute ROAD faithfulness (with --score)."),
        gallery: int = typer.Option(3, "--gallery", help="Gallery images per outcome (TP/FP/FN/TN); 0: none."),
        max_images: Optional[int] = typer.Option(None, "--max-images", help="Score at most this many images."),
        target: Optional[str] = typer.Option(None, "--target", help="Class (or label) whose map is drawn. Default: "
                                             "the positive class of a binary run; the predicted class of a "
                                             "K-class run; the most probable label of a multilabel run."),
        batch_size: int = typer.Option(8, "--batch-size", help="Images per forward pass."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, mps."),
    ) -> None:
        """Heat maps over images, or their scores against boxes.

        Overlays maps on radiographs (RUN INPUT... --method M), or scores every method against the boxes of a
        prepared cache (RUN --data CACHE --split test --score), writing explain_scores.json/.md and a gallery.
        """
        from medclf.errors import MedclfError
        from medclf.runs import RunDir

        _check_positive(batch_size, "--batch-size", allow_zero=False)
        if score:
            if target is not None:
                raise MedclfError("--target draws overlays of INPUT files; --score scores the positive class's maps")
            if data is None:
                raise MedclfError("--score needs --data CACHE (a prepared cache whose manifest has boxes)")
            if inputs:
                raise MedclfError("--score scores a cache; give either INPUT files or --data CACHE --score")
            _check_positive(n_boot, "--n-boot", allow_zero=False)
            _check_positive(gallery, "--gallery", allow_zero=True)
            if max_images is not None:
                _check_positive(max_images, "--max-images", allow_zero=False)
            from medclf.explain.scoring import markdown_table, score_run

            result = score_run(run, data, split=split, methods=methods, out=out, n_boot=n_boot,
                               faithfulness=faithfulness, gallery=gallery, batch_size=batch_size,
                               max_images=max_images, device=device)
            typer.echo(markdown_table(result))
            typer.echo(f"scores: {(out or run) / RunDir.EXPLAIN_SCORES}")
            return
        if data is not None:
            raise MedclfError("--data is for scoring: add --score (or give INPUT files to draw overlays)")
        if not inputs:
            raise MedclfError("give INPUT files or folders to explain, or --data CACHE --score")
        from medclf.explain.run import explain_files, flat_maps_note

        table = explain_files(run, inputs, method=method, out=out, batch_size=batch_size, device=device,
                              target=target)
        for _, row in table.iterrows():
            if row["error"]:
                echo_skipped(row["path"], row["error"])
        done = table[table["error"] == ""]
        typer.echo(f"{len(done)} overlay(s) written to {(out or run / RunDir.EXPLAIN)}")
        note = flat_maps_note(table)
        if note:
            typer.echo(note, err=True)


def _check_positive(value: int, flag: str, allow_zero: bool) -> None:
    from medclf.errors import MedclfError

    if value < 0 or (value == 0 and not allow_zero):
        raise MedclfError(f"{flag} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
