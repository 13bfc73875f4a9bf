"""`medclf recalibrate`: re-fit a run's temperature, threshold(s) and refer band on a new site's labelled sample."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medclf.cli.common import examples


def register(app: typer.Typer) -> None:
    @app.command("recalibrate", epilog=examples(
        "medclf recalibrate runs/r50 --data cache/site_b --out runs/r50_site_b --split val",
        "medclf recalibrate runs/ens3 --data cache/site_b --out runs/ens3_site_b --alpha 0.1",
    ))
    def recalibrate_cmd(
        run: Path = typer.Argument(..., metavar="RUN", help="Run directory (medclf train / ensemble)."),
        data: Path = typer.Option(..., "--data", help="Prepared cache of the new site's labelled images."),
        out: Path = typer.Option(..., "--out", help="New run directory to write (must not exist yet)."),
        split: Optional[str] = typer.Option(None, "--split", help="Fit on this split of the cache only "
                                            "(train, val or test).  [default: every image of the cache]"),
        alpha: Optional[float] = typer.Option(None, "--alpha", help="Re-fit a conformal refer band at this error "
                                              "rate.  [default: the run's own alpha, if it has a band]"),
    ) -> None:
        """Re-fit temperature, operating threshold(s) and refer band on a new site's sample.

        The threshold is re-chosen by the run's own rule (eval.threshold) after a temperature fitted on the
        sample; OUT uses the same weights, records the images it was fitted on (recalibration.json), and
        `medclf evaluate OUT` leaves those images out.
        """
        from medclf.recalibrate import recalibrate

        new = recalibrate(run, data, out, split=split, conformal_alpha=alpha)
        typer.echo(f"recalibrated: {new}")
        typer.echo(summary_line(new))


def summary_line(run_dir: Path) -> str:
    """Temperature, threshold(s) and log-loss on the sample, before -> after."""
    from medclf.errors import MedclfError
    from medclf.runs import RunDir
    from medclf.runs.recalibration import recalibration_record

    r = recalibration_record(run_dir)
    if r is None:
        raise MedclfError(f"{run_dir}: no {RunDir.RECALIBRATION} (not made by medclf recalibrate)")
    before, after = r["before"], r["after"]

    def thr(s: dict) -> str:
        values = s["thresholds"] or [s["threshold"]]
        return ",".join(f"{v:.4f}" for v in values)

    def temp(s: dict) -> str:
        return ",".join(f"{v:.3f}" for v in s["temperature"]) if s["temperature"] else "none"

    return (f"fitted on {r['n']} images ({r['split']}): threshold {thr(before)} -> {thr(after)}, temperature "
            f"{temp(before)} -> {temp(after)}, log-loss {before['log_loss']:.4f} -> {after['log_loss']:.4f}")
