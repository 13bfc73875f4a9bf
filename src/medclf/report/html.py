"""One self-contained HTML report per run directory (`medclf report RUN` -> RUN/report.html).

The page is a list of sections, each a function ``fn(run_dir) -> str | None`` that returns an HTML fragment,
or None when the run holds nothing for it. Sections live in a registry, so features added later (explanation
gallery, robustness, ensemble comparison) add their own without editing this file:

    from medclf.report.html import register_section, embed_png
    register_section("Curves", 50, lambda run_dir: embed_png(RunDir(run_dir).curves_path, "training curves"))

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
from medclf.outdirs import check_output_file
from medclf.registry import Registry
from medclf.report import notices
from medclf.runs.freshness import current_evaluations
from medclf.runs.layout import RunDir
from medclf.tracking import log_file_to_trained_run

SectionFn = Callable[[Path], "str | None"]


@dataclass(frozen=True)
class Section:
    name: str
    order: float
    fn: SectionFn
    how_to_read: str | None = None  # one plain sentence for a clinician-researcher, shown under the heading


SECTIONS: Registry[Section] = Registry("report section")


def register_section(name: str, order: float, fn: SectionFn, how_to_read: str | None = None) -> None:
    """Add (or replace, by name) a report section; `name` is its heading, `order` its place (ascending),
    `how_to_read` a short line saying what its figures mean."""
    SECTIONS.register(name, Section(name, float(order), fn, how_to_read))


def unregister_section(name: str) -> None:
    """Remove a section by name (no error when absent)."""
    SECTIONS.unregister(name)


def registered_sections() -> list[Section]:
    """Registered sections in page order."""
    return sorted(SECTIONS.values(), key=lambda s: (s.order, s.name))


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


def warning_box(title: str, items: Sequence[str]) -> str:
    """A visible box of sentences (escaped); "" when there are none."""
    if not items:
        return ""
    lines = "".join(f"<li>{esc(item)}</li>" for item in items)
    return f'<div class="warning" role="note"><strong>{esc(title)}</strong><ul>{lines}</ul></div>'


def fmt_ci(ci: Any) -> str:
    if not ci or any(v is None for v in ci):
        return "—"
    return f"{ci[0]:.3f} – {ci[1]:.3f}"


# ---------------------------------------------------------------- building the page


def build_report(run_dir: str | Path, out_path: str | Path | None = None, force: bool = False) -> Path:
    """Write the HTML report for `run_dir` (default RUN/report.html) and return its path. An `out_path` that
    exists is replaced only with `force`."""
    run_dir = Path(run_dir)
    if not RunDir(run_dir).config_path.is_file():
        raise MedclfError(f"{run_dir}: not a run directory ({RunDir.CONFIG} not found)")
    if out_path:
        check_output_file(out_path, force)
    _load_plugin_sections()
    out_path = Path(out_path) if out_path else RunDir(run_dir) / RunDir.REPORT
    parts, nav = [], []
    for section in registered_sections():
        fragment = _render_section(section, run_dir)
        if not fragment:  # None or "": nothing to show
            continue
        anchor = _slug(section.name)
        nav.append(f'<a href="#{anchor}">{esc(section.name)}</a>')
        howto = (f'<p class="howto"><b>How to read this:</b> {esc(section.how_to_read)}</p>'
                 if section.how_to_read else "")
        parts.append(f'<section id="{anchor}"><h2>{esc(section.name)}</h2>\n{howto}{fragment}\n</section>')
    write_text(out_path, _page(run_dir, nav, parts))
    log_file_to_trained_run(run_dir, out_path)
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
        loaded = yaml.safe_load(RunDir(run_dir).config_path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _value_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def section_config(run_dir: Path) -> str | None:
    """The settings that differ from the run's preset, then the full resolved config behind one click."""
    from medclf.config import flat_keys, preset_changes

    rd = RunDir(run_dir)
    text = rd.config_path.read_text(encoding="utf-8")
    try:
        cfg = rd.config()
    except MedclfError:  # unparsable or not a medclf config: show it as written
        return f'<p class="note">{esc(RunDir.CONFIG)} as written</p><pre>{esc(text)}</pre>'
    base_name, changes = preset_changes(cfg)
    rows = [(k, _value_text(old), _value_text(new)) for k, old, new in changes]
    every = flat_keys(cfg.to_dict())
    diff = (f'<p class="note">Settings that differ from {esc(base_name)} ({len(rows)} of {len(every)}).</p>'
            + html_table(["key", base_name, "this run"], rows) if rows
            else f'<p class="note">Every setting is as in {esc(base_name)}.</p>')
    full = html_table(["key", "value"], [(k, _value_text(v)) for k, v in every.items()])
    return f'{diff}<details><summary>Full resolved config ({esc(RunDir.CONFIG)})</summary>{full}</details>'



def _count_table(counts: dict, first: str) -> str:
    columns = sorted({c for row in counts.values() if isinstance(row, dict) for c in row})
    rows = []
    for split in _ordered(counts):
        row = counts[split] if isinstance(counts[split], dict) else {}
        values = [int(row.get(c, 0) or 0) for c in columns]
        rows.append([split, *(f"{v:,}" for v in values), f"{sum(values):,}"])
    return html_table([first, *columns, "total"], rows, numeric=range(1, len(columns) + 2))


def section_data(run_dir: Path) -> str | None:
    path = RunDir(run_dir).data_summary_path
    if not path.is_file():
        return None
    summary = read_run_json(path)
    synthetic = notices.synthetic_note(summary)
    out = [warning_box("Synthetic data", [synthetic])] if synthetic else []
    facts = [(k, summary[k]) for k in ("source", "cache", "patients") if summary.get(k)]
    if facts:
        out.append("<p>" + "<br>".join(f"<b>{esc(k)}</b>: {esc(v)}" for k, v in facts) + "</p>")
    if isinstance(summary.get("split_counts"), dict) and summary["split_counts"]:
        out.append("<h3>Images per split and class</h3>" + _count_table(summary["split_counts"], "split"))
    if isinstance(summary.get("view_counts"), dict) and summary["view_counts"]:
        out.append("<h3>View mix</h3>" + _count_table(notices.views_named(summary["view_counts"]), "split"))
    return "\n".join(out) or None


def section_training(run_dir: Path) -> str | None:
    rd = RunDir(run_dir)
    figure = embed_png(rd.curves_path, "training curves",
                       "Left: train vs validation loss per epoch. Right: validation metrics. A dashed line marks the "
                       "kept epoch (runs trained before it was marked: a dotted line at the lowest validation loss).",
                       wide=True)
    summary = _history_summary(run_dir)
    if not figure and not summary:
        return None
    return summary + figure


def _history_summary(run_dir: Path) -> str:
    import pandas as pd

    path = RunDir(run_dir).history_path
    if not path.is_file():
        return ""
    try:
        hist = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise MedclfError(f"{path}: cannot read history ({err})") from err
    if hist.empty or "epoch" not in hist.columns:
        return ""
    facts = [f"{len(hist)} epochs", *notices.selection_facts(hist, _config(run_dir))]
    if "seconds" in hist.columns and hist["seconds"].notna().any():
        facts.append(f"training time {hist['seconds'].sum() / 60:.1f} min")
    return f'<p class="note">{esc("; ".join(facts))}</p>'


_METRIC_ROWS = (
    ("roc_auc", "ROC AUC"), ("pr_auc", "PR AUC (average precision)"), ("recall", "Sensitivity (recall)"),
    ("specificity", "Specificity"), ("precision", "Precision (PPV)"), ("f1", "F1"), ("accuracy", "Accuracy"),
    ("ece", "Expected calibration error (15 bins)"),
)
_PLOTS = (("confusion", "Confusion matrix at the operating threshold"), ("roc", "ROC curve"),
          ("pr", "Precision-recall curve"), ("calibration", "Reliability diagram"),
          ("roc_classes", "ROC curve per class, each against the rest"))
_CAVEATS = "These figures may mean nothing"
HOW_TO_READ = {
    "summary": "each figure is measured on the images of one split; its 95% interval is the range it moves over "
               "when those images are resampled, so a wide interval means too few images to pin it down. It says "
               "nothing about patients from other hospitals or scanners.",
    "data": "patients never cross splits, so no patient's images are seen in training and again in the test. "
            "Where the view is known, its mix matters: in RSNA, AP films are more often positive than PA films.",
    "configuration": "only the settings changed from the preset are listed; the full recipe, as the run used it, "
                     "opens below.",
    "training": "the loss should fall on both curves; validation loss rising while training loss falls is "
                "over-fitting. The dashed line marks the epoch whose weights were kept, and the metric that "
                "chose it.",
    "evaluation": "the operating point is the probability threshold above which an image is called positive; it "
                  "was chosen on validation and applied unchanged here. Sensitivity is the share of positive "
                  "images found, specificity the share of negative images cleared. In the reliability diagram, "
                  "points on the diagonal mean a predicted 30% is positive 30% of the time.",
    "ensemble": "each member is a separate model; the ensemble averages their probabilities. Members that "
                "disagree on an image (a large spread) mark a case to look at twice.",
    "explanations": "the heat map shows which pixels moved the model's output most; a map inside the "
                    "radiologist's box supports the model, one outside it (e.g. on a marker or the edge) is a "
                    "warning sign. A map is no proof of reasoning.",
    "robustness": "accuracy under attack shows how far an invisible change to the pixels moves the decisions; "
                  "the out-of-distribution table shows how well images unlike the training images are flagged.",
}


def _ordered(keys: Iterable[str]) -> list[str]:
    rank = {"train": 0, "val": 1, "test": 2}
    return sorted(keys, key=lambda s: (rank.get(s, 3), s))


def metrics_table(metrics: dict) -> str:
    """Metric | value | 95% CI table for one metrics.json dict, then the counts behind it."""
    ci = metrics.get("ci") or {}
    rows = [(label, fmt(metrics.get(key)), fmt_ci(ci.get(key))) for key, label in _METRIC_ROWS if key in metrics]
    table = html_table(["metric", "value", "95% CI"], rows, numeric=(1, 2))
    counts = [(k.upper() if len(k) == 2 else k, fmt(metrics.get(k))) for k in ("n", "n_pos", "tp", "fp", "fn", "tn")]
    counts_line = ", ".join(f"{k} {v}" for k, v in counts)
    why = f" ({metrics['threshold_reason']})" if metrics.get("threshold_reason") else ""
    return (f'<p class="note">Operating threshold {esc(fmt_threshold(metrics.get("threshold")))}{esc(why)} '
            f"(positive when probability ≥ threshold). {esc(counts_line)}.</p>{table}")


def multiclass_tables(m: dict) -> str:
    """A K-class split: each class against the rest (at the most probable class), the averages, and the K x K
    confusion matrix (true class in rows, called class in columns)."""
    def cell(value: Any, ci: Any = None) -> str:
        return fmt(value) + (f" [{fmt_ci(ci)}]" if ci else "")

    rows = [(name, f"{c['n_pos']:,}", cell(c["roc_auc"], c["ci"].get("roc_auc")), cell(c["sensitivity"]),
             cell(c["specificity"]), cell(c["precision"]), cell(c["f1"])) for name, c in m["per_class"].items()]
    rows += [(f"{avg} average", "", cell(m[avg]["roc_auc"], m["ci"].get("macro_roc_auc") if avg == "macro" else None),
              cell(m[avg]["sensitivity"]), "", cell(m[avg]["precision"]), cell(m[avg]["f1"]))
             for avg in ("macro", "weighted", "micro")]
    per_class = html_table(["class", "n", "ROC AUC [95% CI]", "sensitivity", "specificity", "precision", "F1"],
                           rows, numeric=range(1, 7))
    names = m["label_names"]
    confusion = html_table(["true \\ called", *names], [(n, *(f"{v:,}" for v in row))
                                                         for n, row in zip(names, m["confusion"])],
                           numeric=range(1, len(names) + 1))
    ci = m["ci"]
    summary = (f"The most probable class is the one called. Accuracy {cell(m['accuracy'], ci['accuracy'])}, "
               f"balanced accuracy {cell(m['balanced_accuracy'], ci['balanced_accuracy'])}, "
               f"Cohen's kappa {cell(m['cohen_kappa'], ci['cohen_kappa'])}.")
    return (f'<h4>Per class</h4><p class="note">{esc(summary)}</p>{per_class}'
            f"<h4>Confusion matrix (true class in rows)</h4>{confusion}")


def multilabel_tables(m: dict) -> str:
    """A multilabel split: each label at its own operating threshold (n images holding it), then the macro,
    prevalence-weighted and micro averages; replaces the single-threshold table of the other tasks."""
    def cell(value: Any, ci: Any = None) -> str:
        return fmt(value) + (f" [{fmt_ci(ci)}]" if ci else "")

    rows = [(name, f"{c['n_pos']:,}", fmt_threshold(c["threshold"]), cell(c["roc_auc"], c["ci"].get("roc_auc")),
             cell(c["recall"]), cell(c["specificity"]), cell(c["precision"]), cell(c["f1"]))
            for name, c in m["per_label"].items()]
    rows += [(f"{avg} average", "", "", cell(m[avg]["roc_auc"], m["ci"].get("macro_roc_auc") if avg == "macro"
                                             else None),
              cell(m[avg]["recall"]), cell(m[avg]["specificity"]), cell(m[avg]["precision"]), cell(m[avg]["f1"]))
             for avg in ("macro", "weighted", "micro")]
    table = html_table(["label", "n", "threshold", "ROC AUC [95% CI]", "sensitivity", "specificity", "precision",
                        "F1"], rows, numeric=range(1, 8))
    why = f" ({m['threshold_reason']})" if m.get("threshold_reason") else ""
    note = (f"{m['n']:,} images; each label is called present when its probability reaches its own threshold, "
            f"chosen on validation{why}. All labels right on {fmt(m['exact_match'])} of the images.")
    undefined = (f" No ROC AUC for {', '.join(m['labels_without_auc'])} (one outcome only in this split)."
                 if m.get("labels_without_auc") else "")
    return f'<h4>Per label</h4><p class="note">{esc(note + undefined)}</p>{table}'


def section_evaluation(run_dir: Path) -> str | None:
    rd = RunDir(run_dir)
    blocks = []
    for split, path in current_evaluations(run_dir)[0].items():  # made with the weights the run holds now
        figures = "".join(embed_png(rd.plot(kind, split), f"{kind} {split}", caption) for kind, caption in _PLOTS)
        figs = f'<div class="figs">{figures}</div>' if figures else ""
        metrics = read_run_json(path)
        caveats = warning_box(_CAVEATS, notices.split_warnings(metrics))
        if metrics.get("task") == "multilabel":
            body = multilabel_tables(metrics)
        else:
            body = metrics_table(metrics) + (multiclass_tables(metrics["multiclass"]) if metrics.get("multiclass")
                                             else "")
        blocks.append(f"<h3>Split: {esc(split)}</h3>{caveats}{body}{figs}")
    return "\n".join(blocks) or None


def section_summary(run_dir: Path) -> str | None:
    """What to know first (made-up data, no evaluation yet, what a command would add), then the headline
    figures of the test split (or the last evaluated one) with their caveats."""
    rd = RunDir(run_dir)
    synthetic = notices.synthetic_note(rd.data_summary() if rd.data_summary_path.is_file() else None)
    head = warning_box("Synthetic data", [synthetic]) if synthetic else ""
    files, stale = current_evaluations(run_dir)
    head += warning_box("Unfinished or out of date", notices.freshness_notes(run_dir, stale))
    hints = notices.missing_section_hints(run_dir)
    tail = (f'<p class="note">Not in this report yet: {esc("; ".join(hints))}.</p>' if hints else "")
    split = "test" if "test" in files else next(reversed(files), None)
    if split is None:
        return head + warning_box("Not evaluated", [notices.unevaluated_note(run_dir)]) + tail
    metrics = read_run_json(files[split])
    ci = metrics.get("ci") or {}
    if metrics.get("task") == "multilabel":  # the headline is the macro average over labels
        ci = {"roc_auc": ci.get("macro_roc_auc")}
        metrics = {**metrics, **metrics["macro"]}
    cards = []
    for key, label in (("roc_auc", "ROC AUC"), ("recall", "Sensitivity"), ("specificity", "Specificity"),
                       ("precision", "Precision"), ("f1", "F1")):
        interval = fmt_ci(ci.get(key))
        cards.append(f'<div class="card"><div class="label">{esc(label)}</div><div class="value">'
                     f'{esc(fmt(metrics.get(key)))}</div><div class="ci">95% CI {esc(interval)}</div></div>')
    note = (f"Split {split}: {fmt(metrics.get('n'))} images, {fmt(metrics.get('n_pos'))} positive; "
            f"threshold {fmt_threshold(metrics.get('threshold'))}.")
    if metrics.get("task") == "multilabel":
        note = (f"Split {split}: {fmt(metrics.get('n'))} images, {len(metrics['label_names'])} labels; macro "
                "averages over the labels, each label called at its own threshold.")
    caveats = warning_box(f"{_CAVEATS} ({split})", notices.split_warnings(metrics))
    return f'{head}{caveats}<p class="note">{esc(note)}</p><div class="cards">{"".join(cards)}</div>{tail}'


register_section("Summary", 5, section_summary, HOW_TO_READ["summary"])
register_section("Data", 10, section_data, HOW_TO_READ["data"])
register_section("Configuration", 20, section_config, HOW_TO_READ["configuration"])
register_section("Training", 30, section_training, HOW_TO_READ["training"])
register_section("Evaluation", 40, section_evaluation, HOW_TO_READ["evaluation"])
