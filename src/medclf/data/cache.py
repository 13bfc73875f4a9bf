"""The prepared cache (docs/architecture.md): `images.npy` (uint8 N x S x S), `manifest.csv`, `cache.json`.

Writers build the whole cache in `<out>.tmp-*` and rename it into place, so a reader never sees a half-written
cache and a failed write leaves nothing at `<out>`. `cache_output` guards a whole prepare: it refuses folders
medclf did not make, holds the cache's lock (`medclf.outdirs`) and clears what killed runs left beside it.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import platform
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from medclf.data.splits import SPLITS, leakage_audit
from medclf.errors import DataError
from medclf.io import make_temp_dir, read_json, write_json, write_text
from medclf.labelsets import coding, label_texts, task_of
from medclf.outdirs import (
    MARKER,
    claim_output_dir,
    folder_kind,
    folder_lock,
    refuse_foreign_files,
    register_recogniser,
    write_marker,
)

FORMAT_VERSION = 1
# A cache's files, named here only (prepare, shards and the rest use these names)
IMAGES = "images.npy"  # uint8 N x S x S, memory-mapped
MANIFEST = "manifest.csv"
META = "cache.json"
STAGED_IMAGES = "images.kept.npy"  # the kept rows while skipped images are dropped (CacheWriter.drop)
_META_KEYS = {"format_version", "size", "n", "label_names", "content_hash"}  # what every cache.json holds


def _proves_cache(path: Path) -> bool:
    """A cache made before markers: a cache.json with medclf's keys beside the images and manifest it names
    (another program's cache.json proves nothing)."""
    if not (path / META).is_file():
        return False
    meta = read_json(path / META)
    return isinstance(meta, dict) and _META_KEYS <= set(meta) and all((path / n).is_file() for n in (IMAGES, MANIFEST))


register_recogniser("cache", _proves_cache)  # how medclf.outdirs recognises a cache made before markers
MANIFEST_COLUMNS = ["index", "id", "patient_id", "label", "label_name", "split", "boxes", "view", "sex", "age",
                    "source"]
HASHED_COLUMNS = ["id", "patient_id", "label", "split", "boxes"]


@dataclass
class Cache:
    """An opened cache; `images` is memory-mapped, so opening is instant whatever N is."""

    path: Path
    images: np.ndarray
    manifest: pd.DataFrame
    meta: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path) -> Cache:
        path = Path(path)
        if not path.is_dir():
            what = "not a folder" if path.exists() else "no such folder"
            raise DataError(f"{path}: {what}; give the folder `medclf prepare` wrote (its --out)")
        for name in (IMAGES, MANIFEST, META):
            if not (path / name).is_file():
                raise DataError(f"{path}: not a medclf cache ({name} missing); run `medclf prepare` first")
        meta = read_json(path / META)
        if meta.get("format_version") != FORMAT_VERSION:
            raise DataError(f"{path / META}: format_version {meta.get('format_version')!r}, "
                            f"expected {FORMAT_VERSION}")
        images = np.load(path / IMAGES, mmap_mode="r")
        manifest = read_manifest(path / MANIFEST)
        if len(manifest) != images.shape[0]:
            raise DataError(f"{path}: manifest has {len(manifest)} rows but {IMAGES} holds {images.shape[0]}")
        return cls(path=path, images=images, manifest=manifest, meta=meta)

    @property
    def label_names(self) -> list[str]:
        return list(self.meta["label_names"])

    @property
    def task(self) -> str:
        """binary, multiclass or multilabel (medclf.tasks); caches made before the field read from K."""
        return task_of(self.label_names, self.meta.get("task"))

    @property
    def positive_index(self) -> int:
        return int(self.meta["positive_index"])

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    def indices(self, split: str | None = None) -> np.ndarray:
        """Row indices of one split (all rows when None)."""
        if split is None:
            return np.arange(len(self.manifest))
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        return np.flatnonzero(self.manifest["split"].to_numpy() == split)

    def labels(self, split: str | None = None) -> np.ndarray:
        return self.manifest["label"].to_numpy(dtype=np.int64)[self.indices(split)]

    def boxes(self, index: int) -> list[list[float]]:
        """[x, y, w, h] boxes of one row, in cache pixels."""
        return json.loads(self.manifest["boxes"].iat[index] or "[]")


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Strings stay strings (ids like 'NA' or '0012' survive); unknown text is '', unknown age NaN."""
    # every column but index/label/age is text, extra columns a folder CSV carried (site, scanner, ...) included
    dtypes = defaultdict(lambda: str, {"index": np.int64, "label": np.int64, "age": np.float64})
    return pd.read_csv(path, dtype=dtypes, keep_default_na=False, na_values={"age": [""]})


def versions() -> dict[str, str]:
    import PIL
    import pydicom

    import medclf

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pydicom": pydicom.__version__,
        "pillow": PIL.__version__,
        "medclf": medclf.__version__,
    }


def manifest_hash_bytes(manifest: pd.DataFrame) -> bytes:
    """The manifest part of content_hash: the hashed columns as CSV, '\\n' line ends, no index."""
    return manifest[HASHED_COLUMNS].to_csv(index=False, lineterminator="\n").encode("utf-8")


def split_counts(manifest: pd.DataFrame, label_names: list[str], task: str | None = None) -> dict[str, dict[str, int]]:
    """{split: {label_name: n}} for the splits that have rows (multilabel: images holding each label)."""
    splits = manifest["split"].to_numpy()
    labels = manifest["label"].to_numpy(dtype=np.int64)
    counts: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        chosen = labels[splits == split]
        if chosen.size:
            per = coding(task).counts(chosen, len(label_names))
            counts[split] = {name: int(per[i]) for i, name in enumerate(label_names)}
    return counts


def normalise_manifest(manifest: pd.DataFrame, label_names: list[str], task: str | None = None) -> pd.DataFrame:
    """Columns in contract order, missing optional ones filled, index = row number; checks labels/splits.
    A multilabel manifest's `label` is a bit mask (medclf.tasks)."""
    frame = manifest.reset_index(drop=True).copy()
    for col in ("id", "label", "split"):
        if col not in frame:
            raise ValueError(f"manifest lacks required column {col!r}")
    frame["index"] = np.arange(len(frame))
    frame["label"] = frame["label"].astype(np.int64)
    coding(task).check(frame["label"].to_numpy(), len(label_names))  # class indices, or multilabel bit masks
    bad = sorted(set(frame["split"]) - set(SPLITS))
    if bad:
        raise ValueError(f"unknown split values {bad}; valid: {list(SPLITS)}")
    defaults = {"patient_id": frame["id"], "label_name": label_texts(frame["label"], label_names, task),
                "boxes": "[]", "view": "", "sex": "", "age": np.nan, "source": ""}
    for col, value in defaults.items():
        if col not in frame:
            frame[col] = value
    frame["boxes"] = [b if isinstance(b, str) else json.dumps(b) for b in frame["boxes"]]
    extra = [c for c in frame.columns if c not in MANIFEST_COLUMNS]  # a source's own columns, after the standard
    return frame[MANIFEST_COLUMNS + extra]


class CacheWriter:
    """Streams images into `<out>.tmp-*/images.npy`, then writes manifest + JSON and renames into place."""

    def __init__(self, tmp_dir: Path, n: int, size: int):
        self.tmp_dir = tmp_dir
        self.size = size
        self.images = np.lib.format.open_memmap(tmp_dir / IMAGES, mode="w+", dtype=np.uint8,
                                                shape=(n, size, size))

    def put(self, start: int, block: np.ndarray) -> None:
        self.images[start : start + len(block)] = block

    def keep_rows(self, keep: np.ndarray) -> None:
        """Drop the rows where `keep` is False (files that failed to decode), in blocks of bounded memory."""
        if keep.all():
            return
        staged = self.tmp_dir / STAGED_IMAGES
        kept = np.lib.format.open_memmap(staged, mode="w+", dtype=np.uint8,
                                         shape=(int(keep.sum()), self.size, self.size))
        pos = 0
        for start in range(0, len(keep), 1024):
            block = self.images[start : start + 1024][keep[start : start + 1024]]
            kept[pos : pos + len(block)] = block
            pos += len(block)
        del self.images
        os.replace(staged, self.tmp_dir / IMAGES)
        self.images = kept

    def finish(self, manifest: pd.DataFrame, meta: dict[str, Any]) -> dict[str, Any]:
        label_names = list(meta["label_names"])
        task = task_of(label_names, meta.get("task"))
        manifest = normalise_manifest(manifest, label_names, task)
        # No msync: the rename makes the cache appear whole to readers (they share the page cache); like the
        # rest of medclf it does not promise durability across a power cut, only across a killed process.
        digest = hashlib.sha256()
        for start in range(0, len(self.images), 1024):  # bounded memory for large caches
            digest.update(memoryview(np.ascontiguousarray(self.images[start : start + 1024])).cast("B"))
        digest.update(manifest_hash_bytes(manifest))
        del self.images
        full = {
            "format_version": FORMAT_VERSION, "source": meta.get("source", "custom"), "size": self.size,
            "n": len(manifest),
            "label_names": label_names, "positive_index": int(meta["positive_index"]),
            "label_mode": meta.get("label_mode", ""), "params": meta.get("params", {}),
            "versions": meta.get("versions") or versions(), "split_counts": split_counts(manifest, label_names, task),
            "leakage_audit": meta.get("leakage_audit") or leakage_audit(manifest["patient_id"], manifest["split"]),
            "content_hash": digest.hexdigest(), "skipped": meta.get("skipped", []), "task": task,
        }
        full.update({k: v for k, v in meta.items() if k not in full})  # extra keys (fingerprint, reports) kept
        write_text(self.tmp_dir / MANIFEST, manifest.to_csv(index=False, lineterminator="\n"))
        write_json(self.tmp_dir / META, full)
        return full


@contextlib.contextmanager
def cache_writer(out_dir: str | Path, n: int, size: int, overwrite: bool = False) -> Iterator[CacheWriter]:
    """Yield a writer into a temporary sibling directory; on success it becomes `out_dir` atomically."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise DataError(f"{out_dir}: already exists")
    claim_output_dir(out_dir, "cache", replace=True)  # even with overwrite: never someone else's folder
    if out_dir.exists():  # replaced whole: only while it holds nothing but a cache's own files
        refuse_foreign_files(out_dir, _WRITER_FILES)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = make_temp_dir(f"{out_dir.name}.tmp-", out_dir.parent)
    try:
        write_marker(tmp_dir, "cache")  # first, so a killed run's leftover is recognisably medclf's
        yield CacheWriter(tmp_dir, n, size)
        _replace_dir(tmp_dir, out_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


@contextlib.contextmanager
def cache_output(out_dir: str | Path) -> Iterator[bool]:
    """Guard writing a cache at `out_dir` for the block: refuse a folder medclf did not make (or the current
    folder), hold the cache's lock, and remove the `<out>.tmp-*` / `<out>.old-*` folders a killed run left.
    Yields whether `out_dir` already holds a cache (to keep when up to date, or replace)."""
    out_dir = Path(out_dir)
    claim_output_dir(out_dir, "cache", replace=True)
    with folder_lock(out_dir, "cache"):
        existing = claim_output_dir(out_dir, "cache", replace=True)  # again, now that no one else writes it
        remove_leftovers(out_dir)
        yield existing


_WRITER_FILES = {MARKER, IMAGES, STAGED_IMAGES, MANIFEST, META}


def remove_leftovers(out_dir: Path) -> list[Path]:
    """Delete the temporary folders of killed writes of `out_dir` (call with its lock held); returns them.
    Only folders holding nothing but a cache writer's files are removed: a user's look-alike stays."""
    removed = []
    for kind in ("tmp", "old"):
        for path in sorted(out_dir.parent.glob(f"{glob.escape(out_dir.name)}.{kind}-*")):
            if path.is_dir() and _is_leftover(path, kind):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def _is_leftover(path: Path, kind: str) -> bool:
    names = {p.name for p in path.iterdir()}
    if kind == "tmp":  # cache_writer's files and io.atomic_path's temporaries (.manifest.csv.*.tmp)
        return all(n in _WRITER_FILES or (n.startswith(".") and n.endswith(".tmp")) for n in names)
    return names <= {"cache"} and (not names or folder_kind(path / "cache") == "cache")  # _replace_dir's


def _replace_dir(src: Path, dst: Path) -> None:
    """rename(2) is atomic only onto a missing/empty target, so an old cache is first moved aside."""
    if not dst.exists():
        os.rename(src, dst)
        return
    refuse_foreign_files(dst, _WRITER_FILES)  # again: a file may have been put there while this cache was built
    old = make_temp_dir(f"{dst.name}.old-", dst.parent)
    os.rename(dst, old / "cache")
    os.rename(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def write_cache(out_dir: str | Path, images: np.ndarray, manifest: pd.DataFrame, meta: dict[str, Any],
                overwrite: bool = False) -> Path:
    """Write a cache atomically; fills `format_version`, `n`, `size`, `split_counts`, `content_hash`
    (and `leakage_audit`, `versions` when absent). `meta` needs `label_names` and `positive_index`."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be uint8 N x S x S, got {images.dtype} {images.shape}")
    if len(manifest) != len(images):
        raise ValueError(f"manifest has {len(manifest)} rows for {len(images)} images")
    for key in ("label_names", "positive_index"):
        if key not in meta:
            raise ValueError(f"meta lacks {key!r}")
    with cache_writer(out_dir, len(images), images.shape[1], overwrite=overwrite) as writer:
        writer.put(0, images)
        writer.finish(manifest, meta)
    return Path(out_dir)


def write_cache_view(cache: Cache, view_dir: str | Path, manifest: pd.DataFrame) -> Path:
    """A cache that shares `cache`'s images (symlinked, nothing copied) under another manifest (e.g. other
    splits); its content hash covers both. Kept when `view_dir` already holds one."""
    view_dir = Path(view_dir)
    if (view_dir / META).is_file():
        return view_dir
    base_hash = str(cache.meta.get("content_hash", ""))
    meta = {**cache.meta, "split_counts": split_counts(manifest, cache.label_names, cache.task),
            "leakage_audit": leakage_audit(manifest["patient_id"], manifest["split"]),
            "content_hash": hashlib.sha256(base_hash.encode() + manifest_hash_bytes(manifest)).hexdigest(),
            "view_of": {"cache": str(cache.path.resolve()), "content_hash": base_hash}}
    view_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(f"{view_dir.name}.tmp-", view_dir.parent)
    try:
        os.symlink((cache.path / IMAGES).resolve(), tmp / IMAGES)
        write_text(tmp / MANIFEST, manifest.to_csv(index=False, lineterminator="\n"))
        write_json(tmp / META, meta)
        os.rename(tmp, view_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return view_dir
