"""Split-conformal prediction sets (Vovk et al. 2005; Angelopoulos & Bates 2021, "A gentle introduction").

Fitted on n labelled calibration images (validation, or a site's recalibration sample): a non-conformity score
s(x, y) per image for its true class, and q = the ceil((n + 1)(1 - alpha))-th smallest score. A new image's set
holds every class k with s(x, k) <= q. Guarantee: when the calibration and the new images are exchangeable (same
site, same distribution), P(true class in set) >= 1 - alpha, marginally over images (not for each image, not for
each class); with no ties it is also <= 1 - alpha + 1/(n + 1). With n < 1/alpha - 1, q is infinite and every set
holds every class. An image whose set is not exactly one class is "uncertain - refer".

The Task applies them (`Task.fit_band`, `prediction_sets`, `set_covers`, `refer`); this module holds the formulas.

Scores:
- `lac` (least ambiguous set-valued classifier, Sadinle et al. 2019): s = 1 - p_y. The smallest sets on average;
  the default for binary and multiclass.
- `aps` (adaptive prediction sets, Romano et al. 2020, non-randomised): s = sum of the probabilities of the
  classes at least as likely as y; sets adapt to how hard an image is, at the price of larger sets.
- multilabel (`MultilabelTask.fit_band`): each label is its own two-class problem (absent/present) with the
  `lac` score and its own q. The guarantee then holds per label: for each label, P(its true status in its set)
  >= 1 - alpha. It is NOT joint over labels (that would need alpha / K per label, Bonferroni). An image is
  referred when any label's set is not one status.

Hand-written rather than MAPIE or crepes: those wrap a scikit-learn estimator and its fit/predict, while medclf's
probabilities come from the run's Predictor; split conformal on fixed scores is a quantile and a comparison.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from medclf.errors import MedclfError

SCORES = ("lac", "aps")


def conformal_quantile(scores: Any, alpha: float) -> float:
    """The ceil((n + 1)(1 - alpha))-th smallest score; +inf when that rank exceeds n (too few images)."""
    check_alpha(alpha)
    s = np.sort(np.asarray(scores, dtype=np.float64).reshape(-1))
    if s.size == 0:
        raise MedclfError("conformal: no calibration images")
    rank = math.ceil((s.size + 1) * (1.0 - alpha))
    return float(s[rank - 1]) if rank <= s.size else math.inf


def check_alpha(alpha: float) -> float:
    if not 0.0 < float(alpha) < 1.0:
        raise MedclfError(f"conformal alpha must be in (0, 1), got {alpha!r}")
    return float(alpha)


def class_scores(probs: Any, score: str = "lac") -> np.ndarray:
    """N x K non-conformity score of each class for each image (lower = more plausible)."""
    p = np.asarray(probs, dtype=np.float64)
    if score == "lac":
        return 1.0 - p
    if score == "aps":  # mass of the classes at least as likely as k (k itself included)
        order = np.argsort(-p, axis=1, kind="stable")
        cum = np.cumsum(np.take_along_axis(p, order, axis=1), axis=1)
        out = np.empty_like(p)
        np.put_along_axis(out, order, cum, axis=1)
        return out
    raise MedclfError(f"unknown conformal score {score!r}; choose one of {', '.join(SCORES)}")


def coverage_report(covered: Any, set_size: Any, referred: Any, correct: Any, alpha: float,
                    n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Empirical coverage (share of images whose set holds the truth; multilabel: of image-label pairs) with a
    bootstrap interval over images, the mean set size, the share referred, and the accuracy on the images not
    referred. `covered` is N or N x K booleans; `correct` N booleans (the run's decision right)."""
    from medclf.evaluation.bootstrap import percentile_interval, resample_indices

    covered = np.asarray(covered, dtype=np.float64)
    per_image = covered.mean(axis=1) if covered.ndim == 2 else covered
    referred, correct = np.asarray(referred, dtype=bool), np.asarray(correct, dtype=bool)
    boots = [per_image[idx].mean(axis=1) for idx in resample_indices(len(per_image), n_boot, seed)]
    kept = ~referred
    return {"alpha": float(alpha), "target_coverage": 1.0 - float(alpha), "coverage": float(per_image.mean()),
            "coverage_ci": percentile_interval(np.concatenate(boots)) if boots else None,
            "mean_set_size": float(np.mean(set_size)), "referred": float(referred.mean()),
            "n_referred": int(referred.sum()), "n": int(len(referred)),
            "accuracy_not_referred": float(correct[kept].mean()) if kept.any() else None}
