"""Report section "Subgroups": per-group metrics and the forest plot that `medclf evaluate --by` wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medclf.report.html import embed_png, esc, fmt, fmt_ci, html_table, read_run_json, register_section
from medclf.runs.layout import RunDir

HOW_TO_READ = ("each line is the model measured on one group of patients only (a view, a sex, an age band), at "
               "the same operating threshold. A group whose interval lies far from the dashed overall line, or "
               "whose difference from the rest has a small p-value, is served differently; a model can learn the "
               "view instead of the disease. Groups with too few positive or negative images are shown as too "
               "small, without numbers: a figure measured on them would be noise.")
HEADER = ["group", "n", "positives", "ROC AUC", "95% CI", "sensitivity", "95% CI", "specificity", "95% CI",
          "AUC − rest", "95% CI", "p"]


def group_cells(row: dict[str, Any], min_class: int) -> list[str]:
    """One table row: n and positives always; numbers only for a group large enough to measure."""
    head = [row["group"], fmt(row["n"]), fmt(row["n_pos"])]
    if row["too_small"]:
        return head + [f"too small (n={row['n']}; < {min_class} positives or negatives)"] + [""] * 8
    m, ci = row["metrics"], row["metrics"].get("ci") or {}
    cells = head + [c for key in ("roc_auc", "recall", "specificity") for c in (fmt(m.get(key)), fmt_ci(ci.get(key)))]
    test = row.get("vs_rest")
    if not test:
        return cells + ["rest too small", "", ""]
    p = test.get("p_value")
    return cells + [fmt(test.get("diff")), fmt_ci(test.get("ci")), "—" if p is None else f"{p:.3g}"]


def split_block(rd: RunDir, tag: str) -> str:
    result = read_run_json(rd.subgroups(tag))
    overall = result.get("overall") or {}
    note = (f"Split {tag}: {fmt(overall.get('n'))} images, {fmt(overall.get('n_pos'))} positive, overall ROC AUC "
            f"{fmt(overall.get('roc_auc'))}; threshold {result['threshold']:.4g}. Too small: fewer than "
            f"{result['min_class']} positives or negatives. Test: {result['test']} (p two-sided). Empty values "
            f"form the group '{result.get('unknown', 'unknown')}'.")
    tables = "".join(f"<h4>{esc(column)}</h4>" + html_table(
        HEADER, [group_cells(r, result["min_class"]) for r in rows], numeric=range(1, 12))
        for column, rows in result["columns"].items())
    plot = embed_png(rd.subgroups(tag, ".png"), f"forest plot {tag}", "ROC AUC per subgroup with 95% intervals; "
                     "dashed line: overall AUC", wide=True)
    return (f"<h3>Split: {esc(tag)}</h3><p class=\"note\">{esc(note)}</p>{tables}"
            + (f'<div class="figs">{plot}</div>' if plot else ""))


DEFAULT_BY = ("view", "sex", "age")


def hint_columns(rd: RunDir, tag: str) -> list[str]:
    """The `--by` columns to suggest for `tag`: those of the run's own cache that hold a value for some image
    (when `tag` is of that cache and it can be read), else view, sex, age."""
    from medclf.data.cache import Cache
    from medclf.engine.evaluate import subgroup_columns

    cache_path = rd.cache_path()
    if "@" in tag or cache_path is None:
        return list(DEFAULT_BY)
    try:
        cache = Cache.open(cache_path)
    except Exception:  # a moved or deleted cache: the report still builds, with the generic hint
        return list(DEFAULT_BY)
    manifest = cache.manifest
    return [c for c in subgroup_columns(cache)
            if manifest[c].dropna().astype(str).str.strip().ne("").any()]


def subgroup_hint(rd: RunDir, tag: str) -> str:
    """One line for a test split evaluated without --by (empty when the cache has nothing to group by)."""
    columns = hint_columns(rd, tag)
    if not columns:
        return ""
    data = " --data CACHE" if "@" in tag else ""
    command = f"medclf evaluate {rd.path}{data} --by {','.join(columns)}"  # --split test is the default
    return f'<p class="note">Split {esc(tag)}: run <code>{esc(command)}</code> for results per subgroup.</p>'


def section_subgroups(run_dir: Path) -> str | None:
    rd = RunDir(run_dir)
    tags = rd.subgroup_tags()
    blocks = [split_block(rd, tag) for tag in tags]
    untested = [t for t in rd.prediction_tables() if t.split("@")[0] == "test" and t not in tags]
    blocks += [subgroup_hint(rd, tag) for tag in untested]
    return "\n".join(b for b in blocks if b) or None


register_section("Subgroups", 45, section_subgroups, HOW_TO_READ)
