"""`medclf prepare`: sources -> the cache of docs/architecture.md, each image decoded exactly once.

A run: the source lists the labelled images and checks them against the files; an unchanged input
fingerprint (parameters, label-file hashes, image names/sizes/mtimes) makes it a no-op; worker processes
decode chunks, each saved atomically as `OUT.partial/chunk_NNNNNN_<key>.npz` (key: what decides its pixels),
so an interrupted or failed run resumes with the chunks it finds; finished chunks are copied into
`OUT.tmp-*/images.npy` while the others decode; manifest and cache.json are written beside it and the
directory is renamed to `OUT`, so no half-written cache is ever visible. The whole run holds OUT's lock and
refuses a folder medclf did not make (`cache_output`). docs/data.md has the details.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from medclf.data.cache import META, cache_output, cache_writer, versions, write_cache
from medclf.data.dicom import NORMS, preload
from medclf.data.imageio import load_with_info, scale_boxes
from medclf.data.rsna import label_problems, report_dict
from medclf.data.shards import job_fingerprint, shard_meta, split_then_shard
from medclf.data.splits import SPLITS, leakage_audit, split_strata
from medclf.errors import DataError
from medclf.io import atomic_path, read_json
from medclf.outdirs import claim_output_dir, folder_kind

DECODE_VERSION = 1  # bump when decoded pixels change for the same inputs: stale resumable chunks are then ignored


def default_workers() -> int:
    """All cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def mp_context() -> Any:
    """fork on Linux, else the platform default.

    fork starts a worker in milliseconds with everything imported, and never re-runs the caller's `__main__`
    (spawn/forkserver import it again in each worker: for the `medclf` script that means every CLI module).
    Forking a threaded parent is safe here because workers only run numpy/Pillow/pydicom code, never torch's
    OpenMP pool; the pool is started before the progress bar's monitor thread (as PyTorch's DataLoader does).
    """
    if sys.platform.startswith("linux"):
        return mp.get_context("fork")
    return mp.get_context()


def say(message: str) -> None:  # progress notes go to stderr; stdout carries only the cache path
    print(message, file=sys.stderr, flush=True)


@dataclass
class FileJob:
    """Everything `run_file_job` needs; `items` has id, patient_id, label, label_name, boxes, path (+ split)."""

    source: str
    items: pd.DataFrame
    out: Path
    size: int
    norm: str
    label_names: list[str]
    positive_index: int
    label_mode: str
    params: dict[str, Any]
    fingerprint: str
    val: float = 0.1
    test: float = 0.1
    seed: int = 0
    workers: int | None = None
    skip_bad: bool = False
    force: bool = False
    progress: bool = True
    extra_meta: dict[str, Any] = field(default_factory=dict)
    shard: tuple[int, int] | None = None  # (i, n): only block i of n of the table (shards.py)
    extra_columns: Sequence[str] = ()  # columns of `items` copied into the manifest (a folder CSV's own)
    task: str | None = None  # medclf.tasks; None: binary or multiclass by the class count
    notes: Sequence[str] = ()  # said once the cache is written (never before an error: a bad input stays one line)


def check_params(size: int | None, val: float, test: float, norm: str, workers: int | None) -> None:
    if size is not None and not 8 <= size <= 4096:
        raise DataError(f"--size {size}: must be between 8 and 4096")
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise DataError(f"--val {val} --test {test}: each must be in [0, 1) and their sum below 1")
    if norm not in NORMS:
        raise DataError(f"--norm {norm!r}: valid values are {', '.join(NORMS)}")
    if workers is not None and workers < 1:
        raise DataError(f"--workers {workers}: must be at least 1")


def file_sha256(path: str | Path) -> str:
    """Hash of an input file (labels, .npz); a missing or unreadable one is the user's to fix, named."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    return digest.hexdigest()


def _stat_list(paths: Sequence[str]) -> list[tuple[str, int, int]]:
    return [(str(p), (st := os.stat(p)).st_size, st.st_mtime_ns) for p in paths]


def fingerprint(params: dict[str, Any], label_files: Sequence[str | Path], paths: Sequence[str],
                extra: Any = None) -> str:
    """Hash of what a cache is made from; `workers`/`progress`/`force` must not be in `params`."""
    payload = {
        "decode_version": DECODE_VERSION, "params": params,
        "label_files": [file_sha256(f) for f in label_files], "images": _stat_list(paths), "extra": extra,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def up_to_date(out: Path, fp: str, force: bool, params: dict[str, Any]) -> bool:
    """True when `out` already holds the cache of these inputs; an existing other cache needs `force`.
    (`cache_output` has already refused a folder that is not a cache, whatever `force` says.)"""
    meta: dict[str, Any] = {}
    if (out / META).is_file():
        with contextlib.suppress(OSError, ValueError):
            meta = read_json(out / META)
        if meta.get("input_fingerprint") == fp:
            say(f"nothing to do: {out} is up to date (same inputs and parameters)")
            return True
    if not force and folder_kind(out) is not None:  # an empty folder is simply used
        old = meta.get("params", {})
        changed = sorted(k for k in params if k != "workers" and old.get(k) != params[k])
        why = (f"changed: {', '.join(changed)}" if changed
               else "image or label files changed" if meta else "not a cache")
        raise DataError(f"{out}: already exists and was made from other inputs ({why}); "
                        "pass --force to replace it or choose another --out")
    return False


# ---------------------------------------------------------------------------------------------------- decoding


def chunk_size(n: int) -> int:
    """Images per chunk: a function of n only (resume must not depend on --workers); ~64 chunks, 8..256 each."""
    return int(min(256, max(8, n // 64)))


def _decode_chunk(task: tuple[int, str, list[str], int, str]) -> tuple[int, list[dict[str, Any]], np.ndarray]:
    """Worker: decode one chunk of files, save it atomically, return per-file metadata (errors included) and
    the images (through the pipe: cheaper for the parent than reading the file back)."""
    index, chunk_path, paths, size, norm = task
    images = np.zeros((len(paths), size, size), dtype=np.uint8)
    meta: list[dict[str, Any]] = []
    for j, path in enumerate(paths):
        try:
            loaded = load_with_info(path, size, norm)
        except DataError as err:
            meta.append({"ok": False, "error": str(err)})
            continue
        except Exception as err:  # any decoder failure on one file must name it, not kill the run
            meta.append({"ok": False, "error": f"{path}: cannot decode ({type(err).__name__}: {err})"})
            continue
        images[j] = loaded.image
        meta.append({"ok": True, "header": loaded.header, "shape": list(loaded.original_shape)})
    with atomic_path(chunk_path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, images=images, meta=np.array(json.dumps(meta)))
    return index, meta, images


def _load_chunk_meta(path: Path, expected: int) -> list[dict[str, Any]] | None:
    try:
        with np.load(path) as data:
            meta = json.loads(data["meta"].item())
    except Exception:  # unreadable leftovers are simply decoded again
        return None
    return meta if len(meta) == expected else None


def _raise_bad(metas: Sequence[dict[str, Any]]) -> None:
    errors = [m["error"] for m in metas if not m["ok"]]
    if errors:
        more = f" (and {len(errors) - 1} more bad files)" if len(errors) > 1 else ""
        raise DataError(f"{errors[0]}{more}; pass --skip-bad to skip bad files")


@contextlib.contextmanager
def _executor(workers: int, n_tasks: int) -> Iterator[Callable[[Callable[[Any], Any], Sequence[Any]], Iterator[Any]]]:
    """`run(fn, tasks)` -> results in completion order: plain map in-process when one worker is enough, else
    `workers - 1` forked processes with this process as the last worker (`_share_tasks`)."""
    if workers <= 1 or n_tasks <= 1:
        yield map
        return
    preload()  # once here rather than once per forked worker
    _wait_for_reapers()  # fork with no helper thread running (Python 3.12+ warns about forking threaded parents)
    children = min(workers, n_tasks) - 1
    # Ctrl-C reaches the whole process group: workers ignore it, the parent stops the pool
    pool = mp_context().Pool(children, initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN))
    try:
        yield lambda fn, tasks: _share_tasks(pool, fn, tasks, children)
    except BaseException:
        pool.terminate()
        raise
    pool.close()
    # A child of a process that imported torch takes ~10 ms to exit; this process writes the cache meanwhile.
    reaper = threading.Thread(target=pool.join, name="medclf-prepare-reaper", daemon=True)
    reaper.start()
    _REAPERS.append(reaper)


_REAPERS: list[threading.Thread] = []


def _wait_for_reapers() -> None:
    while _REAPERS:
        _REAPERS.pop().join()


def _share_tasks(pool: Any, fn: Callable[[Any], Any], tasks: Sequence[Any], children: int) -> Iterator[Any]:
    """Children take tasks from the front (two queued each, so none waits for the next), this process from the
    back whenever no child result is waiting. The parent would otherwise idle while the children work, and
    one fork fewer is a large share of a small job: forking a process that has imported torch takes ~10 ms."""
    todo, running = deque(tasks), deque()
    while todo or running:
        while todo and len(running) < 2 * children:
            running.append(pool.apply_async(fn, (todo.popleft(),)))
        finished = [r for r in running if r.ready()]
        for result in finished:
            running.remove(result)
            yield result.get()
        if finished:
            continue
        yield fn(todo.pop()) if todo else running.popleft().get()


def chunk_files(paths: Sequence[str], partial: Path, size: int, norm: str) -> list[tuple[Path, list[str]]]:
    """(chunk file, its paths) in order. A chunk's name hashes what decides its pixels (decoder version, size,
    norm, each file's path, size and mtime), so changing one file invalidates only its own chunk."""
    step = chunk_size(len(paths))
    out = []
    for i, start in enumerate(range(0, len(paths), step)):
        members = list(paths[start : start + step])
        key = json.dumps([DECODE_VERSION, size, norm, _stat_list(members)])
        out.append((partial / f"chunk_{i:06d}_{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz", members))
    return out


def decode_files(chunks: list[tuple[Path, list[str]]], size: int, norm: str, workers: int, skip_bad: bool,
                 progress: bool, on_chunk: Callable[[int, np.ndarray | None], None] | None = None,
                 ) -> list[dict[str, Any]]:
    """Decode every chunk of `chunk_files` not already on disk, returning per-file metadata in order.

    `on_chunk(i, images)` runs in this process as soon as chunk i is done (images None when it was found on
    disk), so the caller can assemble while the workers decode.
    """
    from tqdm import tqdm

    on_chunk = on_chunk or (lambda i, images: None)

    n_files = sum(len(members) for _, members in chunks)
    metas: dict[int, list[dict[str, Any]]] = {}
    for i, (file, members) in enumerate(chunks):
        if file.is_file() and (meta := _load_chunk_meta(file, len(members))) is not None:
            metas[i] = meta
    if metas:
        done = sum(len(m) for m in metas.values())
        say(f"resuming: {len(metas)}/{len(chunks)} chunks ({done}/{n_files} images) already decoded "
            f"in {chunks[0][0].parent}")
        if not skip_bad:
            _raise_bad([m for i in sorted(metas) for m in metas[i]])
        for i in sorted(metas):
            on_chunk(i, None)
    pending = [(i, str(file), members, size, norm) for i, (file, members) in enumerate(chunks) if i not in metas]
    chunks[0][0].parent.mkdir(parents=True, exist_ok=True)
    with _executor(workers, len(pending)) as run, tqdm(
        total=n_files, initial=sum(len(m) for m in metas.values()), unit="img", desc="prepare",
        disable=not progress, file=sys.stderr,
    ) as bar:
        for index, meta, images in run(_decode_chunk, pending):
            metas[index] = meta
            bar.update(len(meta))
            if not skip_bad:
                _raise_bad(meta)  # stop early; finished chunks stay for the next run
            on_chunk(index, images)
    return [m for i in range(len(chunks)) for m in metas[i]]


# -------------------------------------------------------------------------------------------------- assembling


def run_file_job(job: FileJob) -> Path:
    """Decode (resumably), split, audit and write the cache of a file-based source, holding OUT's lock."""
    with cache_output(job.out):
        return _run_file_job(job)


def _run_file_job(job: FileJob) -> Path:
    started = time.perf_counter()
    out = job.out
    if up_to_date(out, job_fingerprint(job.fingerprint, job.shard), job.force, job.params):
        for note in job.notes:  # the cache made earlier rests on the same facts: say them again
            say(note)
        return out
    if job.items.empty:
        raise DataError(f"{out}: no labelled images to prepare")
    strata = split_strata(job.items["label"], job.task, len(job.label_names))
    items = split_then_shard(job.items, job.val, job.test, job.seed, job.shard, strata)
    paths = items["path"].tolist()
    partial = out.parent / f"{out.name}.partial"
    chunks = chunk_files(paths, partial, job.size, job.norm)
    offsets = np.cumsum([0] + [len(members) for _, members in chunks])
    with cache_writer(out, len(paths), job.size, overwrite=True) as writer:

        def assemble(i: int, images: np.ndarray | None) -> None:  # fill the cache while the workers decode on
            if images is None:
                with np.load(chunks[i][0]) as data:
                    images = data["images"]
            writer.put(int(offsets[i]), images)

        metas = decode_files(chunks, job.size, job.norm, job.workers or default_workers(), job.skip_bad,
                             job.progress, assemble)
        ok = np.array([m["ok"] for m in metas])
        skipped = [{"id": i, "path": p, "reason": m["error"]}
                   for i, p, m in zip(items["id"], paths, metas) if not m["ok"]]
        if skipped:
            say(f"--skip-bad: skipped {len(skipped)} bad files: " + "; ".join(s["reason"] for s in skipped[:5]))
        if not ok.any():
            raise DataError(f"{out}: none of the {len(paths)} images could be decoded")
        writer.keep_rows(ok)
        upscale_note(job.size, [m["shape"] for m in metas if m["ok"]])
        manifest = _manifest(job, items[ok].reset_index(drop=True), [m for m in metas if m["ok"]])
        audit = leakage_audit(manifest["patient_id"], manifest["split"])
        if not audit["ok"]:  # cannot happen with split_patients; guards any future split source
            raise DataError(f"{out}: patients in several splits: {audit['patients_in_several_splits'][:5]}")
        audit.update(job.extra_meta.pop("leakage_note", {}))
        meta = _meta(job, audit, job.extra_meta.pop("skipped", []) + skipped)
        if job.shard is not None:
            meta.update(shard_meta(job.shard, len(job.items), job.fingerprint))
        meta["timings"] = {"seconds": round(time.perf_counter() - started, 2)}
        full = writer.finish(manifest, meta)
    shutil.rmtree(partial, ignore_errors=True)
    for note in job.notes:
        say(note)
    _summary(out, full, manifest["split"], len(skipped), time.perf_counter() - started)
    return out


def upscale_note(size: int | None, shapes: Sequence[Sequence[int]]) -> None:
    """Say when --size is larger than the images' own long side: upscaling adds pixels, not detail, and costs
    memory and time in every later stage."""
    sides = np.array([max(shape) for shape in shapes], dtype=np.int64)
    bigger = int((sides < size).sum()) if size and len(sides) else 0
    if bigger:
        lo, hi = int(sides.min()), int(sides.max())
        span = f"{lo} px" if lo == hi else f"{lo}-{hi} px"
        say(f"note: --size {size} is larger than {bigger} of {len(sides)} images (their own long side {span}); "
            f"those are upscaled, which adds no detail; --size {hi} keeps the largest as they are")


def _manifest(job: FileJob, kept: pd.DataFrame, metas: list[dict[str, Any]]) -> pd.DataFrame:
    headers = [m["header"] for m in metas]
    frame = kept[["id", "patient_id", "label", "label_name", "split"]].copy()
    frame["boxes"] = [json.dumps(scale_boxes(b, tuple(m["shape"]), job.size)) for b, m in zip(kept["boxes"], metas)]
    frame["view"] = [h.get("view", "") for h in headers]
    frame["sex"] = [h.get("sex", "") for h in headers]
    frame["age"] = ["" if h.get("age") is None else f"{h['age']:g}" for h in headers]  # 62, not 62.0
    frame["source"] = kept["path"].to_numpy()
    for column in job.extra_columns:  # a folder CSV's own columns; its view/sex/age win over the header's
        given = kept[column].fillna("").astype(str).to_numpy()
        frame[column] = np.where(given != "", given, frame[column]) if column in frame else given
    return frame


def _meta(job: FileJob, audit: dict[str, Any], skipped: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "source": job.source, "label_names": job.label_names, "positive_index": job.positive_index, "task": job.task,
        "label_mode": job.label_mode, "params": job.params, "versions": versions(), "leakage_audit": audit,
        "skipped": skipped, "input_fingerprint": job.fingerprint, **job.extra_meta,
    }


def _summary(out: Path, meta: dict[str, Any], splits: Sequence[str], n_skipped: int, seconds: float) -> None:
    """One line: images per split (and, for a multi-label set, images holding each label), size, time."""
    sizes = pd.Series(list(splits), dtype=object).value_counts()
    counts = ", ".join(f"{s} {int(sizes[s])}" for s in SPLITS if s in sizes)
    per_label = ""
    if meta.get("task") == "multilabel":
        totals = {n: sum(c[n] for c in meta["split_counts"].values()) for n in meta["label_names"]}
        per_label = "; images per label: " + ", ".join(f"{n} {k}" for n, k in totals.items())
    say(f"prepared {out}: {meta['n']} images ({counts}{per_label}), {meta['size']} px, {n_skipped} skipped, "
        f"{seconds:.1f} s")


# ------------------------------------------------------------------------------------------------ entry points


def prepare_rsna(images: str | Path, labels: str | Path, out: str | Path, *, classes: str | Path | None = None,
                 label_mode: str = "binary", size: int = 256, val: float = 0.1, test: float = 0.1, seed: int = 0,
                 workers: int | None = None, norm: str = "robust", skip_missing: bool = False,
                 skip_bad: bool = False, force: bool = False, progress: bool = True,
                 shard: tuple[int, int] | None = None) -> Path:
    """RSNA challenge layout -> cache; returns the cache path. `shard=(i, n)`: block i of n only (shards.py)."""
    from medclf.data.rsna import rsna_source
    from medclf.data.synthetic import synthetic_marker

    check_params(size, val, test, norm, workers)
    out = Path(out)
    claim_output_dir(out, "cache", replace=True)  # a refused --out fails before the labels are read
    src = rsna_source(images, labels, classes, label_mode)
    label_problems(src.report, Path(labels), out, skip_missing)
    params = {"images": str(Path(images).resolve()), "labels": str(Path(labels).resolve()),
              "classes": str(Path(classes).resolve()) if classes else None, "label_mode": label_mode, "size": size,
              "val": val, "test": test, "seed": seed, "norm": norm, "skip_missing": skip_missing, "skip_bad": skip_bad}
    report = report_dict(src.report, skip_missing)
    fp = fingerprint(params, [labels] + ([classes] if classes else []), src.items["path"].tolist(), report)
    unlabelled = [{"id": Path(n).stem, "path": str(Path(images) / n), "reason": "no label row"}
                  for n in src.report.images_without_labels]
    job = FileJob("rsna", src.items, out, size, norm, src.label_names, src.positive_index, label_mode,
                  {**params, "workers": workers}, fp, val, test, seed, workers, skip_bad, force, progress,
                  {"label_check": report, "skipped": unlabelled, **_synthetic(synthetic_marker(labels)),
                   "leakage_note": patient_grouping("patientId")},
                  shard=shard, notes=[patient_note(Path(labels), "patientId", src.items)])
    return run_file_job(job)


def patient_grouping(column: str | None) -> dict[str, Any]:
    """The `leakage_audit` entries saying which column grouped the patients of the split (or that none did)."""
    if column:
        return {"patient_column": column}
    return {"patient_column": None, "note": "no patient_id column: each image is its own patient"}


def patient_note(labels: Path, column: str | None, items: pd.DataFrame) -> str:
    """The line prepare says every time it makes a cache: which column grouped the patients, or that none did
    (one patient's images may then sit in train and test)."""
    if column:
        return (f"patients: grouped by column {column!r} of {labels.name} "
                f"({items['patient_id'].nunique()} patients, {len(items)} images)")
    return (f"patients: {labels.name} has no patient_id column, so each image is its own patient and one "
            "patient's images may land in more than one split")


def default_positive_note(task: str | None, names: Sequence[str], positive_index: int,
                          positive: str | int | None) -> str | None:
    """What the positive class chosen without --positive means for a multiclass set (None otherwise)."""
    from medclf.data.folder import positive_note

    return positive_note(names, positive_index) if task == "multiclass" and positive is None else None


def _synthetic(marker: dict | None) -> dict[str, Any]:
    """cache.json's `synthetic` entry for made-up data (kept out of the fingerprint: caches stay up to date)."""
    return {"synthetic": marker} if marker else {}


def prepare_folder(images: str | Path, labels: str | Path, out: str | Path, *, size: int = 256, val: float = 0.1,
                   test: float = 0.1, seed: int = 0, workers: int | None = None, norm: str = "robust",
                   label_names: Sequence[str] | None = None, positive: str | int | None = None,
                   skip_missing: bool = False, skip_bad: bool = False, force: bool = False,
                   progress: bool = True, shard: tuple[int, int] | None = None,
                   allow_outside_images: bool = False, task: str | None = None,
                   label_columns: Sequence[str] | None = None, uncertain: str = "zero") -> Path:
    """Folder of PNG/JPEG/DICOM + `path,label[,patient_id]` CSV -> cache; returns the cache path.
    `shard=(i, n)`: block i of n only (shards.py). CSV paths must stay inside `images` unless
    `allow_outside_images`. Multi-label: `A|B` labels, `task="multilabel"`, or 0/1 `label_columns` with
    `uncertain` (zero | one | drop) for -1 (medclf.data.folder)."""
    from medclf.data.folder import folder_source

    check_params(size, val, test, norm, workers)
    out = Path(out)
    claim_output_dir(out, "cache", replace=True)  # a refused --out fails before the labels are read
    src = folder_source(images, labels, label_names, positive, allow_outside_images, task=task,
                        label_columns=label_columns, uncertain=uncertain)
    label_problems(src.report, Path(labels), out, skip_missing)
    params = {"images": str(Path(images).resolve()), "labels": str(Path(labels).resolve()), "size": size,
              "val": val, "test": test, "seed": seed, "norm": norm, "label_names": src.label_names,
              "positive_index": src.positive_index, "skip_missing": skip_missing, "skip_bad": skip_bad}
    if allow_outside_images:  # recorded only when set, so caches made before the flag stay up to date
        params["allow_outside_images"] = True
    report = {**report_dict(src.report, skip_missing), "unlisted_files": src.unlisted_files}
    if src.extra_columns:  # recorded only when present, so caches made before they were kept stay up to date
        params["extra_columns"] = src.extra_columns
    if src.task == "multilabel":  # likewise: binary/multiclass caches keep their fingerprints
        params.update(task=src.task, label_columns=list(label_columns or []), uncertain=uncertain)
        report["uncertain_dropped"] = src.uncertain_dropped
    if src.patient_column not in (None, "patient_id"):  # recorded only then: patient_id caches stay up to date
        params["patient_column"] = src.patient_column
    if src.uncertain_dropped:
        say(f"--uncertain drop: left out {len(src.uncertain_dropped)} images with an uncertain (-1) label")
    fp = fingerprint(params, [labels], src.items["path"].tolist(), report)
    extra: dict[str, Any] = {"label_check": report, "leakage_note": patient_grouping(src.patient_column)}
    job = FileJob("folder", src.items, out, size, norm, src.label_names, src.positive_index, src.task,
                  {**params, "workers": workers}, fp, val, test, seed, workers, skip_bad, force, progress, extra,
                  shard=shard, extra_columns=src.extra_columns, task=src.task,
                  notes=[patient_note(Path(labels), src.patient_column, src.items),
                         *filter(None, [default_positive_note(src.task, src.label_names, src.positive_index,
                                                              positive)])])
    return run_file_job(job)


def prepare_medmnist(npz: str | Path, out: str | Path, *, size: int | None = None,
                     label_names: Sequence[str] | None = None, positive: str | int | None = None,
                     force: bool = False, progress: bool = True) -> Path:
    """MedMNIST .npz -> cache, keeping its own splits; `size=None` keeps the native size (28, 64, ...)."""
    from medclf.data.medmnist import LEAKAGE_NOTE, medmnist_source, resize_images

    check_params(size, 0.0, 0.0, "none", None)
    out = Path(out)
    params = {"npz": str(Path(npz).resolve()), "size": size, "norm": "none",
              "label_names": list(label_names) if label_names else None, "positive": positive}
    fp = fingerprint(params, [npz], [])
    with cache_output(out):
        if up_to_date(out, fp, force, params):
            return out
        started = time.perf_counter()
        src = medmnist_source(npz, label_names, positive)
        say(f"note: {LEAKAGE_NOTE}; the file's own splits are kept")
        if note := default_positive_note(src.task, src.label_names, src.positive_index, positive):
            say(note)
        upscale_note(size, [src.images.shape[1:3]] * len(src.images))
        images = resize_images(src.images, size, progress)
        audit = leakage_audit(src.items["patient_id"], src.items["split"]) | {"note": LEAKAGE_NOTE}
        meta = {"source": "medmnist", "label_names": src.label_names, "positive_index": src.positive_index,
                "label_mode": src.task, "task": src.task, "params": params, "versions": versions(),
                "leakage_audit": audit, "skipped": [], "input_fingerprint": fp}
        write_cache(out, images, src.items, meta, overwrite=True)
    _summary(out, read_json(out / META), src.items["split"], 0, time.perf_counter() - started)
    return out
