"""A JSON-able summary of a cache for run directories and reports: counts, never patient data."""

from __future__ import annotations

import pandas as pd

from medclf.data.cache import Cache
from medclf.data.cache import split_counts as label_split_counts
from medclf.labelsets import coding

UNKNOWN = "unknown"  # the group of empty values, as in `evaluate --by` (docs/evaluation.md)


def known_or_unknown(values: pd.Series) -> pd.Series:
    """Missing or empty values (MedMNIST has no view: '') as the group `unknown`."""
    text = values.fillna("").astype(str)
    return text.where(text.str.strip() != "", UNKNOWN)


def patient_grouping_text(meta: dict) -> str | None:
    """What grouped the images into patients for the split, as cache.json records it (None: not recorded)."""
    audit = meta.get("leakage_audit") or {}
    if audit.get("patient_column"):
        return f"grouped by the labels column {audit['patient_column']!r}; no patient is in two splits"
    return audit.get("note")


def data_summary(cache: Cache) -> dict:
    """Counts per split (multi-label: images holding each label), views, and where the cache came from."""
    manifest = cache.manifest
    names = list(cache.label_names)
    # multi-label: images holding each label, every label listed; single-label: the classes present
    listed = coding(cache.task).lists_empty
    split_counts = {split: {name: n for name, n in per.items() if n or listed}
                    for split, per in sorted(label_split_counts(manifest, names, cache.task).items())}
    view_counts = {}
    if "view" in manifest and manifest["view"].notna().any():
        view_counts = {
            split: {str(k): int(v) for k, v in known_or_unknown(group["view"]).value_counts().items()}
            for split, group in manifest.groupby("split")
        }
    return {
        "cache": str(cache.path.resolve()),
        "source": cache.meta.get("source"),
        "content_hash": cache.meta.get("content_hash"),
        "size": cache.size,
        "label_names": names,
        "task": cache.task,
        "positive_index": cache.positive_index,
        "split_counts": split_counts,
        # images per split (a multi-label image counts once here, under each of its labels in split_counts)
        "split_sizes": {str(k): int(v) for k, v in manifest["split"].value_counts().sort_index().items()},
        "view_counts": view_counts,
        **({"patients": grouping} if (grouping := patient_grouping_text(cache.meta)) else {}),
        # made-up data (the demo's) says so in every run and report made from it
        **({"synthetic": cache.meta["synthetic"]} if cache.meta.get("synthetic") else {}),
    }
