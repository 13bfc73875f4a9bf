"""Report section "Robustness": clean vs attacked metrics (`medclf attack`) and OOD AUROC per score (`medclf ood`)."""

from __future__ import annotations

from pathlib import Path

from medclf.report.html import HOW_TO_READ, embed_png, esc, fmt, html_table, read_run_json, register_section
from medclf.runs.layout import RunDir


def attack_tables(run_dir: Path) -> str:
    rd = RunDir(run_dir)
    path = rd / RunDir.ROBUSTNESS
    if not path.is_file():
        return ""
    blocks = []
    for e in read_run_json(path).get("entries", []):
        steps = f", {e['steps']} steps" if e["method"] == "pgd" else ""
        rows = [[f"{r['eps_255']:g}/255" if r["eps"] else "0 (clean)", fmt(r["accuracy"]), fmt(r["f1"]),
                 fmt(r["roc_auc"]), fmt(r["recall"]), fmt(r["specificity"]), fmt(r["flip_rate"])] for r in e["rows"]]
        title = (f"{e['method'].upper()}{steps} on {e['split']} ({e['n']} images, {e['n_pos']} positive), "
                 f"threshold {e['threshold']:.4g}")
        blocks.append(f"<h3>{esc(title)}</h3>" + html_table(
            ["eps", "accuracy", "F1", "ROC AUC", "sensitivity", "specificity", "decisions flipped"], rows,
            numeric=range(1, 7)))
    figures = embed_png(rd / RunDir.ROBUSTNESS_PLOT, "metrics against eps", "Metrics against attack radius", wide=True)
    for method in ("fgsm", "pgd"):
        figures += embed_png(rd.attack_examples(method), f"{method} examples",
                             f"{method.upper()} examples at the largest eps")
    note = ('<p class="note">L-inf attacks on the unit-range grey image before normalisation; eps in grey levels '
            'of 255. Metrics at the clean operating threshold.</p>')
    return note + "".join(blocks) + (f'<div class="figs">{figures}</div>' if figures else "")


def ood_tables(run_dir: Path) -> str:
    path = RunDir(run_dir) / RunDir.OOD
    if not path.is_file():
        return ""
    entries = read_run_json(path).get("entries", [])
    scores = sorted({s for e in entries for s in e["scores"]})
    rows = [[e["name"], e["split"], e["n_in"], e["n_out"],
             *(f"{fmt(e['scores'][s]['auroc'])} / {fmt(e['scores'][s]['fpr95'])}" if s in e["scores"] else "—"
               for s in scores)] for e in entries]
    table = html_table(["OOD set", "in-dist split", "n in", "n OOD", *scores], rows, numeric=range(2, 4 + len(scores)))
    note = ('<p class="note">Out-of-distribution detection: AUROC / FPR at 95% TPR (share of OOD images accepted '
            'when 95% of in-distribution images are). Higher AUROC and lower FPR are better.</p>')
    stored = [e["stored"] for e in entries if (e.get("stored") or {}).get("saved")]
    if stored:
        s = stored[-1]
        text = (f"Stored detector: {s['score']}, threshold {s['threshold']:.4g} (accepts {s['val_accepted']:.1%} of "
                "validation images); predict flags images above it.")
        note += f'<p class="note">{esc(text)}</p>'
    return "<h3>Out-of-distribution inputs</h3>" + note + table


def section_robustness(run_dir: Path) -> str | None:
    html = attack_tables(run_dir) + ood_tables(run_dir)
    return html or None


register_section("Robustness", 60, section_robustness, HOW_TO_READ["robustness"])
