"""A JSON-able summary of a cache for run directories and reports: counts, never patient data."""

from __future__ import annotations

from medclf.data.cache import Cache, split_counts as label_split_counts
from medclf.labelsets import coding


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
            split: {str(k): int(v) for k, v in group["view"].fillna("unknown").value_counts().items()}
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
        # made-up data (the demo's) says so in every run and report made from it
        **({"synthetic": cache.meta["synthetic"]} if cache.meta.get("synthetic") else {}),
    }
