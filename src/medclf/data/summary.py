"""A JSON-able summary of a cache for run directories and reports: counts, never patient data."""

from __future__ import annotations

from medclf.data.cache import Cache
from medclf.data.cache import split_counts as split_counts_of


def data_summary(cache: Cache) -> dict:
    manifest = cache.manifest
    names = list(cache.label_names)
    if cache.task == "multilabel":  # images holding each label (an image may count under several)
        split_counts = split_counts_of(manifest, names, cache.task)
    else:
        split_counts = {
            split: {names[int(k)]: int(v) for k, v in group["label"].value_counts().sort_index().items()}
            for split, group in manifest.groupby("split")
        }
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
        "positive_index": cache.positive_index,
        **({"task": cache.task} if cache.task == "multilabel" else {}),
        "split_counts": split_counts,
        "view_counts": view_counts,
        # made-up data (the demo's) says so in every run and report made from it
        **({"synthetic": cache.meta["synthetic"]} if cache.meta.get("synthetic") else {}),
    }
