"""`medclf evaluate`: metrics with confidence intervals at the run's operating point."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate_cmd(
        run: Path = typer.Argument(..., help="Run directory (medclf train / ensemble)."),
        data: Optional[Path] = typer.Option(None, "--data", help="Another prepared cache (external test set)."),
        split: str = typer.Option("test", "--split", help="train, val or test."),
        n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples for the 95% intervals."),
    ) -> None:
        """Predict a split, write predictions_<split>.csv, metrics_<split>.json and the plots."""
        from medclf.engine.evaluate import evaluate_run
        from medclf.errors import MedclfError

        if split not in ("train", "val", "test"):
            raise MedclfError(f"--split must be train, val or test, not '{split}'")
        m = evaluate_run(run, data=data, split=split, n_boot=n_boot)
        typer.echo(format_metrics(m))


def format_metrics(m: dict) -> str:
    lines = [f"n={m['n']} positives={m['n_pos']} threshold={m['threshold']:.4f}",
             f"TP={m['tp']} FP={m['fp']} FN={m['fn']} TN={m['tn']}"]
    for key in ("roc_auc", "pr_auc", "recall", "precision", "specificity", "accuracy", "f1"):
        value, ci = m.get(key), (m.get("ci") or {}).get(key)
        shown = "n/a" if value is None else f"{value:.4f}"
        if ci and ci[0] is not None:
            shown += f"  [{ci[0]:.4f}, {ci[1]:.4f}]"
        lines.append(f"{key:12s} {shown}")
    return "\n".join(lines)
