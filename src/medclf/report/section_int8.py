"""Report section "int8 deployment": fp32 vs int8 ONNX Runtime on the split `medclf export --int8` checked."""

from __future__ import annotations

from pathlib import Path

from medclf.report.html import esc, fmt, html_table, read_run_json, register_section
from medclf.runs.layout import RunDir

HOW_TO_READ = ("the int8 model computes the same graph with 8-bit weights and activations; it is kept only when "
               "its AUC is within the allowed drop of fp32's and few decisions change. |Δp| is how far one image's "
               "probability moves; the int8 engine decides at its own threshold, chosen on validation.")


def _auc(side: dict) -> str:
    ci = side.get("ci")
    return fmt(side.get("roc_auc")) + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci and ci[0] is not None else "")


def section_int8(run_dir: Path) -> str | None:
    path = RunDir(run_dir).int8_report_path
    if not path.is_file():
        return None
    c = read_run_json(path)
    threshold = c.get("threshold")
    shown = ", ".join(f"{t:.4g}" for t in threshold) if isinstance(threshold, list) else f"{threshold:.4g}"
    rows = [["ROC AUC [95% CI]", _auc(c["fp32"]), _auc(c["int8"])],
            ["AUC drop (fp32 - int8)", "", fmt(c.get("auc_drop"))],
            ["max |Δp| / mean |Δp|", "", f"{fmt(c['max_abs_diff'])} / {fmt(c['mean_abs_diff'])}"],
            ["decisions changed at the run's threshold", "", f"{c['changed_decisions']} ({c['changed_share']:.2%})"],
            ["int8 operating threshold", "", shown]]
    note = (f"{c['file']}: {c['quantized_nodes']} model ops quantised (static QDQ, per-channel int8 weights), "
            f"calibrated on {c['n_calibration']} images of {c['split']}; compared on its {c['n']} images. "
            f"Allowed: AUC drop <= {c['max_auc_drop']:g}, changed decisions <= {c['max_changed']:.0%}. "
            f"{c.get('threshold_reason') or ''}")
    if c.get("kept_float"):
        note += f" Kept in float32 (no int8 kernel): {', '.join(c['kept_float'])}."
    return f'<p class="note">{esc(note)}</p>' + html_table(["", "fp32", "int8"], rows, numeric=(1, 2))


register_section("int8 deployment", 70, section_int8, HOW_TO_READ)
