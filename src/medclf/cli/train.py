"""`medclf train`: train one model on a prepared cache (one process, or DDP under torchrun / with --gpus)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from medclf.cli.common import MLFLOW_HELP, examples, mlflow_overrides, preset_help


def register(app: typer.Typer) -> None:
    @app.command("train", epilog=examples(
        "medclf train --data cache/pmnist --out runs/pmnist --config pneumoniamnist_cpu",
        "medclf train --data cache/rsna256 --out runs/r50_cb --config resnet50_imagenet_224 loss.class_balanced=true",
    ))
    def train_cmd(
        data: Path = typer.Option(..., "--data", help="Prepared cache directory (medclf prepare ...)."),
        out: Path = typer.Option(..., "--out", help="Run directory to write."),
        config: Optional[str] = typer.Option(None, "--config", help=preset_help()),
        resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from OUT/last.pt."),
        mlflow: Optional[str] = typer.Option(None, "--mlflow", metavar="URI", help=MLFLOW_HELP),
        gpus: int = typer.Option(
            1, "--gpus", min=1,
            help="Train with DistributedDataParallel on N GPUs of this machine (starts torchrun; data.batch_size "
                 "is per GPU). With train.device=cpu: N CPU processes (gloo).",
        ),
        overrides: Optional[List[str]] = typer.Argument(
            None, metavar="KEY=VALUE",
            help="key=value config overrides, e.g. train.epochs=5 model.name=densenet121 loss.name=focal "
                 "loss.class_balanced=true (class-balanced weights, effective number of samples) "
                 "data.sampler=balanced."),
    ) -> None:
        """Train a classifier on a prepared cache.

        Writes config.yaml, history.csv, curves.png, best.pt and last.pt into OUT. Any config key can be set
        after the options; for imbalanced data see docs/imbalance.md (loss.class_balanced=true,
        data.sampler=balanced, loss.name=focal or soft_f1).
        """
        from medclf.config import load_config

        overrides = [*(overrides or []), *mlflow_overrides(mlflow)]
        cfg = load_config(config, overrides)  # validated here, before any process is started
        if gpus > 1:
            from medclf.engine.distributed import check_gpus, launch

            check_gpus(gpus, cfg.train.device)
            args = ["train", "--data", str(data), "--out", str(out), *(["--config", config] if config else []),
                    *(["--resume"] if resume else []), *(overrides or [])]
            sys.exit(launch(gpus, args))

        from medclf.cli.common import resume_hint_on_interrupt
        from medclf.engine.distributed import is_main
        from medclf.engine.train import train

        with resume_hint_on_interrupt(lambda: _resume_hint(out, cfg.train.epochs, resume)):
            run = train(cfg, data, out, resume=resume)
        if is_main():
            typer.echo(f"run: {run}")


def _resume_hint(out: Path, epochs: int, resumed: bool) -> str:
    from medclf.engine.state import saved_epochs
    from medclf.runs import RunDir

    done = saved_epochs(out)
    if done is None:
        return "no epoch was finished yet; run the same command again to start over"
    how = "run the same command again" if resumed else "add --resume to the same command"
    return f"{RunDir(out).last} holds epoch {done} of {epochs}; {how} to continue"
