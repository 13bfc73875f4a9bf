"""`medclf evaluate`: metrics with confidence intervals at the run's operating point."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medclf.cli.common import examples


def register(app: typer.Typer) -> None:
    @app.command("evaluate", epilog=examples(
        "medclf evaluate runs/r50 --split test --by view,sex,age",
        "medclf evaluate runs/r50 --data cache/external --split test",
    ))
    def evaluate_cmd(
        run: Path = typer.Argument(..., metavar="RUN", help="Run directory (medclf train / ensemble)."),
        data: Optional[Path] = typer.Option(None, "--data", help="Another prepared cache (an external test set); "
                                            "its files are tagged <split>@<hash>."),
        split: str = typer.Option("test", "--split", help="train, val or test."),
        n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples for the 95% intervals."),
        mlflow: Optional[str] = typer.Option(
            None, "--mlflow", metavar="URI",
            help="Log the metrics to MLflow at URI (sqlite:///FILE or http://HOST:PORT). Without it they go to the "
                 "MLflow run that trained the model, if it was tracked."),
        by: Optional[str] = typer.Option(
            None, "--by", metavar="COLUMNS",
            help="Comma-separated manifest columns (view, sex, age, extra folder-CSV columns): metrics per group, "
                 "a test of each group's AUC against the rest, and a forest plot (subgroups_<split>.*)."),
        age_bins: Optional[str] = typer.Option(
            None, "--age-bins", metavar="EDGES",
            help="Age band edges in years for --by age; bands are [lo, hi) (default 0,18,40,60,80,200)."),
        min_group: Optional[int] = typer.Option(
            None, "--min-group", min=1,
            help="Groups with fewer positives or negatives than this are reported as too small "
                 "(default: the run's eval.threshold_min_class, 10)."),
        engine: str = typer.Option("torch", "--engine", help="torch, onnx, or onnx-int8 (RUN/model.int8.onnx "
                                   "from `export --int8`, at its own threshold)."),
    ) -> None:
        """Metrics with 95% intervals on a split, at the run's operating point.

        Writes predictions_<split>.csv, metrics_<split>.json and the plots into RUN; with --by, also
        subgroups_<split>.json/.csv and the forest plot subgroups_<split>.png.
        """
        from medclf.engine.evaluate import evaluate_run
        from medclf.errors import MedclfError

        if split not in ("train", "val", "test"):
            raise MedclfError(f"--split must be train, val or test, not '{split}'")
        columns = [c.strip() for c in by.split(",") if c.strip()] if by else []
        edges = {"age_bins": parse_numbers(age_bins, "--age-bins")} if age_bins else {}
        m = evaluate_run(run, data=data, split=split, n_boot=n_boot, mlflow_uri=mlflow, by=columns,
                         min_group_class=min_group, engine=engine, **edges)
        typer.echo(format_metrics(m))
        if m.get("subgroups"):
            typer.echo(format_subgroups(m["subgroups"]))
        for warning in m.get("warnings") or []:  # also in metrics_<split>.json and the report
            typer.echo(f"warning: {m['split']}: {warning}", err=True)


def _value_ci(value: float | None, ci: list | None) -> str:
    shown = "n/a" if value is None else f"{value:.4f}"
    return shown + (f"  [{ci[0]:.4f}, {ci[1]:.4f}]" if ci and ci[0] is not None else "")


def format_multilabel(m: dict) -> str:
    """One line per label (n with it, threshold, AUC with interval, sensitivity, specificity, F1), then the
    macro and micro averages."""
    lines = [f"n={m['n']} labels={len(m['label_names'])} exact match={m['exact_match']:.4f}"]
    for name, c in m["per_label"].items():
        auc = _value_ci(c["roc_auc"], c["ci"]["roc_auc"])
        lines.append(f"{name:16s} n={c['n_pos']:<5d} threshold={c['threshold']:.4f} AUC {auc}"
                     f"  sens {_value_ci(c['recall'], None)} spec {_value_ci(c['specificity'], None)}"
                     f" F1 {_value_ci(c['f1'], None)}")
    for avg in ("macro", "micro"):
        a = m[avg]
        ci = m["ci"]["macro_roc_auc"] if avg == "macro" else None
        lines.append(f"{avg + ' average':16s} AUC {_value_ci(a['roc_auc'], ci)}  sens {_value_ci(a['recall'], None)}"
                     f" spec {_value_ci(a['specificity'], None)} F1 {_value_ci(a['f1'], None)}")
    return "\n".join(lines)


def format_metrics(m: dict) -> str:
    """The lines `medclf evaluate` prints: the layout of the task that wrote `m` (medclf.tasks), then the
    calibration and refer-band lines every task shares."""
    from medclf.tasks import task_for_metrics

    return "\n".join([FORMATS.get(task_for_metrics(m).name, format_single_label)(m), *deploy_lines(m)])


def format_single_label(m: dict) -> str:
    lines = [f"n={m['n']} positives={m['n_pos']} threshold={m['threshold']:.4f}",
             f"TP={m['tp']} FP={m['fp']} FN={m['fn']} TN={m['tn']}"]
    for key in ("roc_auc", "pr_auc", "recall", "precision", "specificity", "accuracy", "f1"):
        lines.append(f"{key:12s} {_value_ci(m.get(key), (m.get('ci') or {}).get(key))}")
    return "\n".join(lines)


def deploy_lines(m: dict) -> list[str]:
    """ECE and Brier score with intervals per curve, and the refer band's coverage (issue 21)."""
    lines = []
    for name, c in ((m.get("calibration") or {}).get("per_label") or {}).items():
        lines.append(f"calibration {name}: ECE {_value_ci(c['ece'], c['ci']['ece'])}  "
                     f"Brier {_value_ci(c['brier'], c['ci']['brier'])}")
    band = m.get("conformal")
    if band:
        acc = band["accuracy_not_referred"]
        lines.append(f"refer band (alpha {band['alpha']:g}): coverage "
                     f"{_value_ci(band['coverage'], band['coverage_ci'])} (target {band['target_coverage']:.2f}), "
                     f"mean set size {band['mean_set_size']:.3f}, referred {band['referred']:.1%}, accuracy not "
                     f"referred {'n/a' if acc is None else f'{acc:.4f}'}")
    return lines + operating_point_lines(m.get("operating_point"))


def operating_point_lines(shift: dict | None) -> list[str]:
    """Sensitivity and specificity at the threshold on the images it was chosen on, next to these images'."""
    if not shift:
        return []

    def pair(r: dict) -> str:
        return f"sens {_value_ci(r['sensitivity']['value'], r['sensitivity']['ci'])}  " \
               f"spec {_value_ci(r['specificity']['value'], r['specificity']['ci'])}"

    where = f"{shift['reference_split']}, {shift['reference_n']} images"
    return [f"operating point {name}: {pair(v['reference'])} ({where})  |  here: {pair(v['here'])}"
            + (f"  MOVED: {', '.join(v['moved'])}" if v["moved"] else "")
            for name, v in shift["per_label"].items()]


# the task types whose metrics files print another way than the single-label one
FORMATS = {"multilabel": format_multilabel}


def parse_numbers(text: str, option: str) -> list[float]:
    from medclf.errors import MedclfError

    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise MedclfError(f"{option} must be comma-separated numbers, got {text!r}") from None


def format_subgroups(result: dict) -> str:
    """One line per group: n, positives, AUC with its interval and the test against the rest, or 'too small'."""
    lines = [f"subgroups (too small: < {result['min_class']} positives or negatives; {result['test']})"]
    for column, rows in result["columns"].items():
        for row in rows:
            head = f"{column}={row['group']:<12s} n={row['n']:<5d} positives={row['n_pos']:<5d}"
            if row["too_small"]:
                lines.append(f"{head} too small")
                continue
            auc, ci = row["metrics"]["roc_auc"], row["metrics"]["ci"]["roc_auc"]
            text = "AUC n/a" if auc is None else f"AUC {auc:.4f}"
            text += f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""
            test = row["vs_rest"]
            if test and test["diff"] is not None:
                text += f"  vs rest {test['diff']:+.4f}"
                text += f" p={test['p_value']:.3g}" if test["p_value"] is not None else ""
            lines.append(f"{head} {text}")
    return "\n".join(lines)
