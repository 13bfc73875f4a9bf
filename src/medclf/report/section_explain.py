"""Report section "Explanations": box scores per method and the TP/FP/FN/TN gallery.

Reads what `medclf explain RUN --data CACHE --score` left in the run directory (RunDir.EXPLAIN_SCORES and the
gallery PNGs under RunDir.EXPLAIN); shows nothing when the run was never scored.
"""

from __future__ import annotations

from pathlib import Path

from medclf.report.html import HOW_TO_READ, embed_png, esc, fmt, fmt_ci, html_table, read_run_json, register_section
from medclf.runs.layout import RunDir

OUTCOMES = (("tp", "True positives"), ("fp", "False positives"), ("fn", "False negatives"),
            ("tn", "True negatives"))


def _stat(stat: dict | None) -> tuple[str, str]:
    if not isinstance(stat, dict) or stat.get("mean") is None:
        return "—", "—"
    return fmt(stat["mean"]), fmt_ci(stat.get("ci"))


def scores_table(result: dict) -> str:
    rows = []
    for name, s in (result.get("methods") or {}).items():
        rows.append([name, fmt(s.get("n")), *_stat(s.get("pointing_game")), *_stat(s.get("energy_in_box")),
                     *_stat(s.get("road")), fmt(s.get("n_flat"))])
    header = ["method", "n", "pointing game", "95% CI", "energy in box", "95% CI", "ROAD", "95% CI", "flat maps"]
    return html_table(header, rows, numeric=range(1, 9))


def _note(result: dict) -> str:
    chance, ci = _stat(result.get("chance"))
    return (f"{fmt(result.get('n_images'))} positive images with {fmt(result.get('n_boxes'))} boxes from "
            f"{result.get('cache')} (split {result.get('split')}); maps for class '{result.get('class')}' at "
            f"{result.get('input_size')} px, scored at the cache's {result.get('cache_size')} px. "
            f"Chance level (share of the image inside the boxes): {chance} (95% CI {ci}). Pointing game: the "
            f"map's maximum lies in a box; energy in box: share of the map's mass inside the boxes; ROAD: "
            f"(LeRF − MoRF)/2 change in probability when pixels are removed in the map's order, higher is more "
            f"faithful. Flat maps (nothing stands out) count as misses.")


def _caption(label: str, info: dict) -> str:
    shown = ", ".join(f"{im.get('id')} (p={im.get('prob', 0):.2f})" for im in info.get("images", []))
    return (f"{label}: {shown}. First column: the radiograph with its boxes (green); then one column per "
            f"method (hit/miss: pointing game).")


def section_explain(run_dir: Path) -> str | None:
    rd = RunDir(run_dir)
    path = rd / RunDir.EXPLAIN_SCORES
    if not path.is_file():
        return None
    result = read_run_json(path)
    parts = [f'<p class="note">{esc(_note(result))}</p>', scores_table(result)]
    gallery = result.get("gallery") or {}
    figures = []
    for key, label in OUTCOMES:
        info = gallery.get(key)
        if info:
            png = rd / RunDir.EXPLAIN / info["png"] if info.get("png") else rd.explain_gallery(key)
            figures.append(embed_png(png,
                                     f"explanation gallery: {label.lower()}", _caption(label, info), wide=True))
    if any(figures):
        parts.append("<h3>Gallery</h3>" + "".join(figures))
    return "\n".join(parts)


register_section("Explanations", 50, section_explain, HOW_TO_READ["explanations"])
