"""One self-contained HTML report per run directory (`medclf report RUN` -> RUN/report.html).

The page is a list of sections, each a function ``fn(run_dir) -> str | None`` that returns an HTML fragment,
or None when the run holds nothing for it. Sections live in a registry, so features added later (explanation
gallery, robustness, ensemble comparison) add their own without editing this file:

    from medclf.report.html import register_section, embed_png
    register_section("Explanations", 50, lambda run_dir: embed_png(run_dir / "cams.png", "Grad-CAM"))

A registering module must be imported before `build_report` runs; modules named ``medclf.report.section_*``
are imported automatically. Built-in orders: 5 summary, 10 data, 20 configuration, 30 training,
40 evaluation; leave gaps. Every piece of text goes through `esc` (html.escape); images are embedded as
base64 data URIs and the CSS is inline, so the file has no external resources.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import importlib
import json
import pkgutil
import re
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any, Callable, Iterable, Sequence

from medclf.errors import MedclfError
from medclf.io import write_text

SectionFn = Callable[[Path], "str | None"]


@dataclass(frozen=True)
class Section:
    name: str
    order: float
    fn: SectionFn


_SECTIONS: dict[str, Section] = {}


def register_section(name: str, order: float, fn: SectionFn) -> None:
    """Add (or replace, by name) a report section; `name` is its heading, `order` its place (ascending)."""
    _SECTIONS[name] = Section(name, float(order), fn)


def unregister_section(name: str) -> None:
    """Remove a section by name (no error when absent)."""
    _SECTIONS.pop(name, None)


def registered_sections() -> list[Section]:
    """Registered sections in page order."""
    return sorted(_SECTIONS.values(), key=lambda s: (s.order, s.name))


# ---------------------------------------------------------------- helpers for section authors


def esc(value: Any) -> str:
    """HTML-escaped text of `value` (quotes too, so it is safe inside attributes)."""
    return html.escape(str(value), quote=True)


def embed_png(path: str | Path, alt: str, caption: str | None = None, wide: bool = False) -> str:
    """A <figure> with the PNG at `path` embedded as a base64 data URI; "" when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    cls = ' class="wide"' if wide else ""
    return f'<figure{cls}><img alt="{esc(alt)}" src="data:image/png;base64,{data}">{cap}</figure>'


def html_table(header: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    """A table with escaped cells; column indices in `numeric` are right-aligned."""
    num = ' class="num"'

    def cells(values: Sequence[Any], tag: str) -> str:
        return "".join(f"<{tag}{num if i in numeric else ''}>{esc(v)}</{tag}>" for i, v in enumerate(values))
    body = "".join(f"<tr>{cells(r, 'td')}</tr>" for r in rows)
    return f"<table><thead><tr>{cells(header, 'th')}</tr></thead><tbody>{body}</tbody></table>"


def read_run_json(path: Path) -> Any:
    """JSON from a run file, or a MedclfError naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise MedclfError(f"{path}: cannot read JSON ({err})") from err


def fmt(value: Any, digits: int = 3) -> str:
    """Numbers to `digits` decimals, None to 'undefined', ints with thousands separators."""
    if value is None:
        return "undefined"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:.{digits}f}"


def fmt_threshold(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else fmt(value)


def fmt_ci(ci: Any) -> str:
    if not ci or any(v is None for v in ci):
        return "—"
    return f"{ci[0]:.3f} – {ci[1]:.3f}"


# ---------------------------------------------------------------- building the page


def build_report(run_dir: str | Path, out_path: str | Path | None = None) -> Path:
    """Write the HTML report for `run_dir` (default RUN/report.html) and return its path."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise MedclfError(f"{run_dir}: not a run directory (config.yaml not found)")
    _load_plugin_sections()
    out_path = Path(out_path) if out_path else run_dir / "report.html"
    parts, nav = [], []
    for section in registered_sections():
        fragment = _render_section(section, run_dir)
        if not fragment:  # None or "": nothing to show
            continue
        anchor = _slug(section.name)
        nav.append(f'<a href="#{anchor}">{esc(section.name)}</a>')
        parts.append(f'<section id="{anchor}"><h2>{esc(section.name)}</h2>\n{fragment}\n</section>')
    write_text(out_path, _page(run_dir, nav, parts))
    return out_path


def _render_section(section: Section, run_dir: Path) -> str | None:
    # a broken optional section must not cost the user the whole report; the failure stays visible on the page
    try:
        return section.fn(run_dir)
    except Exception as err:  # noqa: BLE001
        warnings.warn(f"report section {section.name!r} failed: {err}", stacklevel=2)
        return f'<p class="error">This section could not be built: {esc(type(err).__name__)}: {esc(err)}</p>'


def _page(run_dir: Path, nav: list[str], sections: list[str]) -> str:
    from medclf import __version__

    model = _config(run_dir).get("model", {})
    model_name = model.get("name") if isinstance(model, dict) else None
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = " · ".join(x for x in (f"model {model_name}" if model_name else "", f"run {run_dir.resolve()}",
                                      f"generated {now}") if x)
    template = Template(resources.files("medclf.report").joinpath("templates/page.html").read_text("utf-8"))
    return template.safe_substitute(
        title=esc(f"Model report: {run_dir.resolve().name}"), subtitle=esc(subtitle), nav="".join(nav),
        sections="\n".join(sections),
        footer=esc(f"medclf {__version__}. Intervals are 95% percentile bootstrap intervals over images; "
                   "the operating threshold was chosen on validation and applied unchanged to other splits."))


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "section"


def _load_plugin_sections() -> None:
    import medclf.report as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("section_"):
            importlib.import_module(f"medclf.report.{info.name}")


# ---------------------------------------------------------------- built-in sections


def _config(run_dir: Path) -> dict:
    import yaml

    try:
        loaded = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _flatten(tree: dict, prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            rows.extend(_flatten(value, f"{name}."))
        else:
            rows.append((name, value if isinstance(value, str) else json.dumps(value, default=str)))
    return rows


def section_config(run_dir: Path) -> str | None:
    text = (run_dir / "config.yaml").read_text(encoding="utf-8")
    tree = _config(run_dir)
    if not tree:  # unparsable or not a mapping: show it as written
        return f'<p class="note">config.yaml as written</p><pre>{esc(text)}</pre>'
    rows = "".join(f'<tr><td class="key">{esc(k)}</td><td>{esc(v)}</td></tr>' for k, v in _flatten(tree))
    return f"<table><thead><tr><th>key</th><th>value</th></tr></thead><tbody>{rows}</tbody></table>"


def _count_table(counts: dict, first: str) -> str:
    columns = sorted({c for row in counts.values() if isinstance(row, dict) for c in row})
    rows = []
    for split in _ordered(counts):
        row = counts[split] if isinstance(counts[split], dict) else {}
        values = [int(row.get(c, 0) or 0) for c in columns]
        rows.append([split, *(f"{v:,}" for v in values), f"{sum(values):,}"])
    return html_table([first, *columns, "total"], rows, numeric=range(1, len(columns) + 2))


def section_data(run_dir: Path) -> str | None:
    path = run_dir / "data_summary.json"
    if not path.is_file():
        return None
    summary = read_run_json(path)
    out = []
    facts = [(k, summary[k]) for k in ("source", "cache") if summary.get(k)]
    if facts:
        out.append("<p>" + "<br>".join(f"<b>{esc(k)}</b>: {esc(v)}" for k, v in facts) + "</p>")
    if isinstance(summary.get("split_counts"), dict) and summary["split_counts"]:
        out.append("<h3>Images per split and class</h3>" + _count_table(summary["split_counts"], "split"))
    if isinstance(summary.get("view_counts"), dict) and summary["view_counts"]:
        out.append("<h3>View mix</h3>" + _count_table(summary["view_counts"], "split"))
    return "\n".join(out) or None


def section_training(run_dir: Path) -> str | None:
    figure = embed_png(run_dir / "curves.png", "training curves",
                       "Left: train vs validation loss per epoch. Right: validation metrics.", wide=True)
    summary = _history_summary(run_dir / "history.csv")
    if not figure and not summary:
        return None
    return summary + figure


def _history_summary(path: Path) -> str:
    import pandas as pd

    if not path.is_file():
        return ""
    try:
        hist = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise MedclfError(f"{path}: cannot read history ({err})") from err
    if hist.empty or "epoch" not in hist.columns:
        return ""
    facts = [f"{len(hist)} epochs"]
    for col, best in (("val_auc", "max"), ("val_loss", "min")):
        if col in hist.columns and hist[col].notna().any():
            i = hist[col].idxmax() if best == "max" else hist[col].idxmin()
            facts.append(f"best {col} {hist.at[i, col]:.3f} at epoch {hist.at[i, 'epoch']}")
            break
    if "seconds" in hist.columns and hist["seconds"].notna().any():
        facts.append(f"training time {hist['seconds'].sum() / 60:.1f} min")
    return f'<p class="note">{esc("; ".join(facts))}</p>'


_METRIC_ROWS = (
    ("roc_auc", "ROC AUC"), ("pr_auc", "PR AUC (average precision)"), ("recall", "Sensitivity (recall)"),
    ("specificity", "Specificity"), ("precision", "Precision (PPV)"), ("f1", "F1"), ("accuracy", "Accuracy"),
    ("ece", "Expected calibration error (15 bins)"),
)
_PLOTS = (("confusion", "Confusion matrix at the operating threshold"), ("roc", "ROC curve"),
          ("pr", "Precision-recall curve"), ("calibration", "Reliability diagram"))


def _ordered(keys: Iterable[str]) -> list[str]:
    rank = {"train": 0, "val": 1, "test": 2}
    return sorted(keys, key=lambda s: (rank.get(s, 3), s))


def metrics_files(run_dir: Path) -> dict[str, Path]:
    """split -> metrics_<split>.json in the run, in display order (train, val, test, then the rest)."""
    found = {p.name[len("metrics_"):-len(".json")]: p for p in run_dir.glob("metrics_*.json")}
    if not found and (run_dir / "metrics.json").is_file():
        found = {"test": run_dir / "metrics.json"}
    return {s: found[s] for s in _ordered(found)}


def metrics_table(metrics: dict) -> str:
    """Metric | value | 95% CI table for one metrics.json dict, then the counts behind it."""
    ci = metrics.get("ci") or {}
    rows = [(label, fmt(metrics.get(key)), fmt_ci(ci.get(key))) for key, label in _METRIC_ROWS if key in metrics]
    table = html_table(["metric", "value", "95% CI"], rows, numeric=(1, 2))
    counts = [(k.upper() if len(k) == 2 else k, fmt(metrics.get(k))) for k in ("n", "n_pos", "tp", "fp", "fn", "tn")]
    counts_line = ", ".join(f"{k} {v}" for k, v in counts)
    return (f'<p class="note">Operating threshold {esc(fmt_threshold(metrics.get("threshold")))} '
            f"(positive when probability ≥ threshold). {esc(counts_line)}.</p>{table}")


def section_evaluation(run_dir: Path) -> str | None:
    files = metrics_files(run_dir)
    blocks = []
    for split, path in files.items():
        figures = "".join(embed_png(run_dir / f"{kind}_{split}.png", f"{kind} {split}", caption)
                          for kind, caption in _PLOTS)
        figs = f'<div class="figs">{figures}</div>' if figures else ""
        blocks.append(f"<h3>Split: {esc(split)}</h3>{metrics_table(read_run_json(path))}{figs}")
    return "\n".join(blocks) or None


def section_summary(run_dir: Path) -> str | None:
    files = metrics_files(run_dir)
    split = "test" if "test" in files else next(reversed(files), None)
    if split is None:
        return None
    metrics = read_run_json(files[split])
    ci = metrics.get("ci") or {}
    cards = []
    for key, label in (("roc_auc", "ROC AUC"), ("recall", "Sensitivity"), ("specificity", "Specificity"),
                       ("precision", "Precision"), ("f1", "F1")):
        interval = fmt_ci(ci.get(key))
        cards.append(f'<div class="card"><div class="label">{esc(label)}</div><div class="value">'
                     f'{esc(fmt(metrics.get(key)))}</div><div class="ci">95% CI {esc(interval)}</div></div>')
    note = (f"Split {split}: {fmt(metrics.get('n'))} images, {fmt(metrics.get('n_pos'))} positive; "
            f"threshold {fmt_threshold(metrics.get('threshold'))}.")
    return f'<p class="note">{esc(note)}</p><div class="cards">{"".join(cards)}</div>'


register_section("Summary", 5, section_summary)
register_section("Data", 10, section_data)
register_section("Configuration", 20, section_config)
register_section("Training", 30, section_training)
register_section("Evaluation", 40, section_evaluation)
