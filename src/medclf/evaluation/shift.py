"""Did the operating point travel? Sensitivity and specificity at the run's threshold(s) on the images it was
chosen on (validation, or a recalibration sample: `contract.operating_point`) next to another set's, each with
a 95% Wilson score interval (scipy's `binomtest(...).proportion_ci`).

A difference is flagged when the two intervals do not overlap: conservative (two intervals can overlap while the
difference is still significant), so a flag means the operating point really moved, not noise. With the band's
coverage below 1 - alpha beyond its interval (`conformal.below_target`), it is the signal that the run needs a
local re-fit: `medclf recalibrate`.
"""

from __future__ import annotations

from typing import Any

from scipy.stats import binomtest

RATES = {"sensitivity": (0, 1), "specificity": (2, 3)}  # (hits, misses) positions in [tp, fn, tn, fp]


def rate_with_ci(hits: int, misses: int) -> dict[str, Any]:
    """hits / (hits + misses) with its 95% Wilson interval; None values when there are no images."""
    n = int(hits) + int(misses)
    if n == 0:
        return {"value": None, "ci": None, "n": 0}
    ci = binomtest(int(hits), n).proportion_ci(confidence_level=0.95, method="wilson")
    return {"value": hits / n, "ci": [float(ci.low), float(ci.high)], "n": n}


def rates(counts: list[int]) -> dict[str, dict[str, Any]]:
    """Sensitivity and specificity of one column's [tp, fn, tn, fp]."""
    return {name: rate_with_ci(counts[h], counts[m]) for name, (h, m) in RATES.items()}


def apart(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """The two intervals do not overlap."""
    if a["ci"] is None or b["ci"] is None:
        return False
    return a["ci"][1] < b["ci"][0] or b["ci"][1] < a["ci"][0]


def operating_shift(reference: dict[str, Any], here: dict[str, list[int]]) -> dict[str, Any]:
    """The comparison `evaluate` records as `operating_point`: per scored column, the reference's and these
    images' rates and which of them `moved`; `moved` overall; the reference's `split` and `n`."""
    per_label = {}
    for name, counts in here.items():
        ref_counts = (reference.get("counts") or {}).get(name)
        if ref_counts is None:
            continue
        ref, now = rates(ref_counts), rates(counts)
        per_label[name] = {"reference": ref, "here": now, "moved": [k for k in RATES if apart(ref[k], now[k])]}
    return {"reference_split": reference.get("split"), "reference_n": reference.get("n"), "per_label": per_label,
            "moved": any(v["moved"] for v in per_label.values())}


def shift_warnings(shift: dict[str, Any] | None, coverage: dict[str, Any] | None, remedy: str) -> list[str]:
    """One line per moved rate, and one for a band covering less than promised, each naming the remedy."""
    lines = []
    shift = shift or {}
    for name, v in (shift.get("per_label") or {}).items():
        for k in v["moved"]:
            ref, now = v["reference"][k], v["here"][k]
            lines.append(f"operating point moved: {name} {k} {_fmt(ref)} on {shift['reference_split']} "
                         f"vs {_fmt(now)} here (95% intervals apart); re-fit it on a labelled local sample: {remedy}")
    if coverage and coverage.get("below_target"):
        lo, hi = coverage["coverage_ci"]
        lines.append(f"refer band covers {coverage['coverage']:.3f} [{lo:.3f}, {hi:.3f}] of these images, below "
                     f"the promised {coverage['target_coverage']:.2f}: they are not like the ones it was fitted on; "
                     f"{remedy}")
    return lines


def _fmt(r: dict[str, Any]) -> str:
    return f"{r['value']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"
