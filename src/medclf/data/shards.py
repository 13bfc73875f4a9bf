"""Sharded prepare: `--shard i/n` decodes one block of the label table into a shard cache, and
`medclf prepare merge` joins the shards into the cache an unsharded run would have written.

- A shard is the contiguous block `i` of `n` of the labelled-image table (the `numpy.array_split` boundaries:
  the first `N % n` blocks hold one row more), so shards 0..n-1 in order are the table in its own order.
  Contiguous rather than `i::n` so that merging is a concatenation, streamed block by block.
- The split is assigned on the full table before it is cut (prepare.py), so each row has the split it has in
  an unsharded run, whatever the shard count.
- Every shard is itself a valid cache, with `shard` in its cache.json: index, count, its rows, and the input
  fingerprint of the whole (unsharded) job, which must agree across the shards being merged.
- The merged `images.npy` and `manifest.csv` are byte-identical to the unsharded run's, hence the same
  `content_hash`; its cache.json keeps the unsharded fingerprint, so re-running the unsharded `prepare` on it
  finds it up to date.
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from medclf.data.cache import MANIFEST, META, Cache, cache_output, cache_writer
from medclf.data.splits import leakage_audit, split_patients
from medclf.errors import DataError
from medclf.io import read_json
from medclf.outdirs import folder_kind

_BLOCK = 1024  # images copied per write while merging: bounded memory whatever the cache size
_PER_SHARD_KEYS = ("shard", "timings", "input_fingerprint", "skipped", "leakage_audit", "n", "split_counts",
                   "content_hash", "format_version", "size")


def parse_shard(text: str) -> tuple[int, int]:
    """`"i/n"` -> (i, n), parts numbered 0..n-1."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise DataError(f"--shard {text!r}: expected i/n, e.g. 0/4 (parts are numbered 0 to n-1)")
    index, count = int(match.group(1)), int(match.group(2))
    check_shard((index, count))
    return index, count


def check_shard(shard: tuple[int, int]) -> None:
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise DataError(f"--shard {index}/{count}: need 0 <= i < n (parts are numbered 0 to n-1)")


def shard_rows(n_rows: int, shard: tuple[int, int]) -> slice:
    """The rows of block `i` of `n` (array_split boundaries)."""
    index, count = shard
    base, extra = divmod(n_rows, count)
    start = index * base + min(index, extra)
    stop = start + base + (1 if index < extra else 0)
    if start == stop:
        raise DataError(f"--shard {index}/{count}: the table has only {n_rows} labelled images; use fewer parts")
    return slice(start, stop)


def split_then_shard(items: pd.DataFrame, val: float, test: float, seed: int,
                     shard: tuple[int, int] | None, strata: np.ndarray | None = None) -> pd.DataFrame:
    """The label table with its `split` column (assigned on the full table unless the source gave one), cut to
    the shard's rows when `shard` is given: each row gets the split it has in an unsharded run. `strata`
    (splits.split_strata) default to the labels."""
    if "split" not in items:
        strata = items["label"] if strata is None else strata
        items = items.assign(split=split_patients(strata, items["patient_id"], val, test, seed))
    if shard is None:
        return items
    check_shard(shard)
    return items.iloc[shard_rows(len(items), shard)].reset_index(drop=True)


def job_fingerprint(full_fingerprint: str, shard: tuple[int, int] | None) -> str:
    """The input fingerprint of the cache a job writes: the whole job's, or one derived from it for a shard."""
    if shard is None:
        return full_fingerprint
    return hashlib.sha256(f"{full_fingerprint}:shard:{shard[0]}/{shard[1]}".encode()).hexdigest()


def shard_meta(shard: tuple[int, int], n_total: int, full_fingerprint: str) -> dict[str, Any]:
    """cache.json keys of a shard: what `merge` needs to check and order the parts."""
    rows = shard_rows(n_total, shard)
    return {"input_fingerprint": job_fingerprint(full_fingerprint, shard),
            "shard": {"index": shard[0], "count": shard[1], "rows": [rows.start, rows.stop], "n_total": n_total,
                      "input_fingerprint": full_fingerprint}}


def merge_shards(shards: Sequence[str | Path], out: str | Path, force: bool = False, progress: bool = True) -> Path:
    """Join shard caches (any order) into one cache at `out` (holding its lock); returns its path."""
    out = Path(out)
    caches = _ordered_shards([Cache.open(p) for p in shards])
    first = caches[0].meta
    full_fp = first["shard"]["input_fingerprint"]
    with cache_output(out):
        return _merge(caches, out, full_fp, force, progress)


def _merge(caches: list[Cache], out: Path, full_fp: str, force: bool, progress: bool) -> Path:
    from tqdm import tqdm

    if _up_to_date(out, full_fp, force):
        return out
    manifest = pd.concat([_manifest_as_written(c.path) for c in caches], ignore_index=True)
    meta = _merged_meta(caches, manifest, full_fp)
    with cache_writer(out, len(manifest), caches[0].size, overwrite=True) as writer, tqdm(
        total=len(manifest), unit="img", desc="merge", disable=not progress, file=sys.stderr
    ) as bar:
        pos = 0
        for cache in caches:
            for start in range(0, len(cache.images), _BLOCK):
                block = np.asarray(cache.images[start : start + _BLOCK])
                writer.put(pos, block)
                pos += len(block)
                bar.update(len(block))
        full = writer.finish(manifest, meta)
    print(f"merged {len(caches)} shards into {out}: {full['n']} images, content_hash {full['content_hash'][:12]}",
          file=sys.stderr)
    return out


def _ordered_shards(caches: list[Cache]) -> list[Cache]:
    """Shards sorted by index, after checking they are the complete set of parts of one prepare job."""
    if not caches:
        raise DataError("prepare merge: give the shard directories to join")
    for cache in caches:
        if not isinstance(cache.meta.get("shard"), dict):
            raise DataError(f"{cache.path}: not a shard (prepared without --shard)")
    first = caches[0]
    for cache in caches[1:]:
        for key in ("count", "input_fingerprint"):
            if cache.meta["shard"][key] != first.meta["shard"][key]:
                raise DataError(f"{cache.path}: shard {key} differs from {first.path}'s; "
                                "these are parts of different prepare runs")
    count = first.meta["shard"]["count"]
    indices = sorted(c.meta["shard"]["index"] for c in caches)
    if indices != list(range(count)):
        missing = sorted(set(range(count)) - set(indices))
        repeated = sorted({i for i in indices if indices.count(i) > 1})
        raise DataError(f"prepare merge: need shards 0..{count - 1} once each; "
                        f"missing {missing}, repeated {repeated}")
    return sorted(caches, key=lambda c: c.meta["shard"]["index"])


def _manifest_as_written(path: Path) -> pd.DataFrame:
    """Every column as the text in the file (ages like `62` must not come back as `62.0`)."""
    return pd.read_csv(path / MANIFEST, dtype=str, keep_default_na=False)


def _merged_meta(caches: list[Cache], manifest: pd.DataFrame, full_fp: str) -> dict[str, Any]:
    first = caches[0].meta
    meta = {k: v for k, v in first.items() if k not in _PER_SHARD_KEYS}
    audit = leakage_audit(manifest["patient_id"], manifest["split"])
    for key in ("note", "patient_column"):  # what grouped the patients, as each shard recorded it
        if key in first.get("leakage_audit", {}):
            audit[key] = first["leakage_audit"][key]
    meta["leakage_audit"] = audit
    skipped: list[dict] = []  # every shard repeats the table-level entries (unlabelled files): keep each once
    for cache in caches:
        skipped.extend(s for s in cache.meta.get("skipped", []) if s not in skipped)
    meta["skipped"] = skipped
    meta["input_fingerprint"] = full_fp
    meta["merged_from"] = [{"path": str(c.path.resolve()), "content_hash": c.meta.get("content_hash")}
                           for c in caches]
    return meta


def _up_to_date(out: Path, full_fp: str, force: bool) -> bool:
    if folder_kind(out) is None:  # absent or empty (cache_output refused anything else)
        return False
    if (out / META).is_file() and read_json(out / META).get("input_fingerprint") == full_fp:
        print(f"nothing to do: {out} already holds these shards' cache", file=sys.stderr)
        return True
    if not force:
        raise DataError(f"{out}: already exists; pass --force to replace it or choose another --out")
    return False
