"""Report section "Calibration, decision curve and refer band" (issue 21): per evaluated split, ECE and Brier
score with intervals and the temperature, the reliability diagram, the decision curve, the refer band's coverage,
and for a recalibrated run, what was re-fitted on which images."""

from __future__ import annotations

from pathlib import Path

from medclf.report.html import (
    embed_png,
    esc,
    fmt,
    fmt_ci,
    fmt_threshold,
    html_table,
    read_run_json,
    register_section,
    warning_box,
)
from medclf.runs.freshness import current_evaluations
from medclf.runs.layout import RunDir
from medclf.runs.recalibration import recalibration_record

HOW_TO_READ = (
    "calibration: a predicted 30% should be positive 30% of the time. ECE is the average gap between predicted "
    "and observed rates (15 bins), the Brier score the mean squared error of the probability; lower is better "
    "for both. A temperature divides the model's logits so its probabilities fit validation (or the site's "
    "sample); it never changes which image ranks above which. Decision curve: at each threshold probability "
    "(the risk at which you would act), the net benefit of acting on the model, counted in true positives per "
    "image after charging each false positive at the odds of that threshold; the model is worth using only "
    "where its curve lies above both 'treat all' and 'treat none'. Refer band: each image gets the set of "
    "classes that are plausible at error rate alpha; an image whose set is not exactly one class is marked "
    "'uncertain — refer'. On images like the ones the band was fitted on, the set holds the true class for at "
    "least 1 - alpha of them; coverage below that on another site means the band (and likely the threshold) "
    "needs `medclf recalibrate`. Operating point: sensitivity and specificity at the run's threshold on the images "
    "it was chosen on next to these images', with 95% Wilson intervals; 'moved' when the intervals do not overlap.")


def calibration_table(metrics: dict) -> str:
    cal = metrics.get("calibration") or {}
    rows = [(name, fmt(c["ece"]), fmt_ci(c["ci"]["ece"]), fmt(c["brier"]), fmt_ci(c["ci"]["brier"]))
            for name, c in (cal.get("per_label") or {}).items()]
    temp = cal.get("temperature")
    note = ("temperature " + ", ".join(f"{t:.3f}" for t in temp) if temp else "no temperature (probabilities as "
            "the model gives them)")
    return (f'<p class="note">{esc(note)}.</p>'
            + html_table(["label", "ECE", "95% CI", "Brier", "95% CI"], rows, numeric=range(1, 5)))


def band_table(band: dict) -> str:
    rows = [("target coverage (1 - alpha)", fmt(band["target_coverage"])),
            ("coverage [95% CI]", f"{fmt(band['coverage'])} [{fmt_ci(band['coverage_ci'])}]"),
            ("mean set size", fmt(band["mean_set_size"])), ("share referred", fmt(band["referred"])),
            ("accuracy on images not referred", fmt(band["accuracy_not_referred"])),
            ("fitted on", f"{band.get('fitted_on')} ({band.get('n_fitted')} images, score {band['score']})"),
            ("guarantee", band["guarantee"])]
    low = warning_box("Coverage below target", [
        "the interval lies below 1 - alpha: these images are not like the ones the band was fitted on; "
        "re-fit it on a labelled local sample (medclf recalibrate)"]) if band.get("below_target") else ""
    return low + html_table(["refer band", "value"], rows)


def operating_point_table(shift: dict) -> str:
    """Sensitivity and specificity at the threshold where it was chosen and here, a box when one moved."""
    def cell(r: dict) -> str:
        return f"{fmt(r['value'])} [{fmt_ci(r['ci'])}]"

    where = f"{shift['reference_split']} ({shift['reference_n']})"
    rows = [(name, cell(v["reference"]["sensitivity"]), cell(v["here"]["sensitivity"]),
             cell(v["reference"]["specificity"]), cell(v["here"]["specificity"]), ", ".join(v["moved"]) or "—")
            for name, v in shift["per_label"].items()]
    moved = warning_box("Operating point moved", [
        "sensitivity or specificity here lies outside the interval of the images the threshold was chosen on: "
        "re-choose it on a labelled local sample (medclf recalibrate)"]) if shift.get("moved") else ""
    return moved + html_table(["label", f"sensitivity, {where}", "sensitivity here", f"specificity, {where}",
                               "specificity here", "moved"], rows)


def recalibration_note(run_dir: Path) -> str:
    r = recalibration_record(run_dir)
    if r is None:
        return ""
    before, after = r["before"], r["after"]

    def thr(s: dict) -> str:
        return ", ".join(fmt_threshold(v) for v in (s["thresholds"] or [s["threshold"]]))

    text = (f"Recalibrated from {r['source_run']} on {r['n']} images of {r['cache']} ({r['split']}): threshold "
            f"{thr(before)} → {thr(after)}; log-loss on that sample {fmt(before['log_loss'])} → "
            f"{fmt(after['log_loss'])}. Those images are left out of this run's evaluation of that cache.")
    return f'<p class="note">{esc(text)}</p>'


def section_deploy(run_dir: Path) -> str | None:
    rd = RunDir(run_dir)
    blocks = []
    for split, path in current_evaluations(run_dir)[0].items():  # made with the weights the run holds now
        metrics = read_run_json(path)
        if "calibration" not in metrics:
            continue  # evaluated before medclf wrote these figures
        figures = embed_png(rd.plot("calibration", split), f"reliability {split}", "Reliability diagram") + \
            embed_png(rd.plot("decision_curve", split), f"decision curve {split}",
                      "Decision curve (net benefit; the operating threshold marked)", wide=True)
        useful = (metrics.get("decision_curve") or {}).get("useful_range") or {}
        ranges = "; ".join(f"{k}: {'nowhere' if v is None else f'{v[0]:.2f}–{v[1]:.2f}'}" for k, v in useful.items())
        band = band_table(metrics["conformal"]) if metrics.get("conformal") else ""
        if metrics.get("operating_point"):
            band = operating_point_table(metrics["operating_point"]) + band
        blocks.append(f"<h3>Split: {esc(split)}</h3>{calibration_table(metrics)}"
                      f'<p class="note">The model beats treat-all and treat-none at threshold probabilities '
                      f"{esc(ranges)}.</p>{band}<div class=\"figs\">{figures}</div>")
    if not blocks:
        return None
    return recalibration_note(run_dir) + "\n".join(blocks)


register_section("Calibration, decision curve and refer band", 45, section_deploy, HOW_TO_READ)
