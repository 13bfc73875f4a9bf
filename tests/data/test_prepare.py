"""`prepare` end to end on the synthetic RSNA set: cache contract, no-op re-runs, resume, atomicity."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from medclf.data.cache import MANIFEST_COLUMNS, Cache
from medclf.data.prepare import chunk_size, prepare_rsna
from medclf.errors import DataError

CONTRACT_KEYS = ["format_version", "source", "size", "n", "label_names", "positive_index", "label_mode", "params",
                 "versions", "split_counts", "leakage_audit", "content_hash", "skipped"]


def _prepare(root: Path, out: Path, **kw) -> Path:
    kw.setdefault("size", 64)
    kw.setdefault("progress", False)
    return prepare_rsna(root / "stage_2_train_images", root / "stage_2_train_labels.csv", out, **kw)


def test_cache_contract(synthetic_rsna, synthetic_cache):
    cache = Cache.open(synthetic_cache)
    m, meta = cache.manifest, cache.meta
    assert isinstance(cache.images, np.memmap) and cache.images.shape == (40, 64, 64)
    assert cache.images.dtype == np.uint8 and cache.size == 64
    assert list(m.columns) == MANIFEST_COLUMNS and list(m["index"]) == list(range(40))
    assert list(meta)[: len(CONTRACT_KEYS)] == CONTRACT_KEYS
    assert meta["format_version"] == 1 and meta["source"] == "rsna" and meta["n"] == 40
    assert cache.label_names == ["normal", "pneumonia"] and cache.positive_index == 1
    assert set(meta["versions"]) == {"python", "numpy", "pydicom", "pillow", "medclf"}
    assert sum(sum(c.values()) for c in meta["split_counts"].values()) == 40
    assert meta["split_counts"]["test"]["pneumonia"] == 1  # round(12 * 0.1) positives per held-out split
    assert len(cache.indices("train")) + len(cache.indices("val")) + len(cache.indices("test")) == 40
    assert cache.labels().sum() == 12
    # content hash: image bytes then the id,patient_id,label,split,boxes columns as CSV
    digest = hashlib.sha256(np.ascontiguousarray(cache.images).tobytes())
    digest.update(m[["id", "patient_id", "label", "split", "boxes"]].to_csv(index=False, lineterminator="\n").encode())
    assert meta["content_hash"] == digest.hexdigest()
    # boxes scaled 128 -> 64 px; header fields from the DICOMs
    rows = pd.read_csv(synthetic_rsna / "stage_2_train_labels.csv").dropna()
    first = rows.iloc[0]
    i = int(np.flatnonzero(m["id"] == first["patientId"])[0])
    assert cache.boxes(i)[0] == [first["x"] / 2, first["y"] / 2, first["width"] / 2, first["height"] / 2]
    ds = pydicom.dcmread(synthetic_rsna / "stage_2_train_images" / f"{m['id'][3]}.dcm")
    assert (m["view"][3], m["sex"][3], m["age"][3]) == (ds.ViewPosition, ds.PatientSex, float(ds.PatientAge))


def test_positives_show_their_opacities(synthetic_cache):
    cache = Cache.open(synthetic_cache)
    images = cache.images.astype(float)
    pos = np.flatnonzero(cache.labels() == 1)
    neg = np.flatnonzero(cache.labels() == 0)
    gaps = []
    for i in pos:
        x, y, w, h = (int(round(v)) for v in cache.boxes(int(i))[0])
        inside = images[i, y : y + h, x : x + w].mean()
        gaps.append(inside - images[neg, y : y + h, x : x + w].mean())
    assert min(gaps) > 20, gaps  # grey levels brighter than the same place in negatives


def test_rerun_is_a_noop_and_workers_do_not_change_the_hash(synthetic_rsna, synthetic_cache, tmp_path, capsys):
    before = (synthetic_cache / "images.npy").stat().st_mtime_ns
    _prepare(synthetic_rsna, synthetic_cache, workers=2, classes=synthetic_rsna / "stage_2_detailed_class_info.csv")
    assert f"nothing to do: {synthetic_cache} is up to date" in capsys.readouterr().err
    assert (synthetic_cache / "images.npy").stat().st_mtime_ns == before
    serial = Cache.open(_prepare(synthetic_rsna, tmp_path / "serial", workers=1,
                                 classes=synthetic_rsna / "stage_2_detailed_class_info.csv"))
    assert serial.meta["content_hash"] == Cache.open(synthetic_cache).meta["content_hash"]


def test_changed_parameters_need_force(synthetic_rsna, tmp_path):
    out = _prepare(synthetic_rsna, tmp_path / "cache", size=32, workers=1)
    with pytest.raises(DataError, match=r"cache: already exists and was made from other inputs "
                                        r"\(changed: seed, size\)"):
        _prepare(synthetic_rsna, out, size=48, seed=1, workers=1)
    assert Cache.open(out).size == 32
    _prepare(synthetic_rsna, out, size=48, seed=1, workers=1, force=True)
    assert Cache.open(out).size == 48
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # no temporary or old directories left


def test_bad_file_fails_cleanly_then_resumes_with_skip_bad(synthetic_rsna, tmp_path, capsys):
    root = tmp_path / "rsna"
    shutil.copytree(synthetic_rsna, root)
    bad = root / "stage_2_train_images" / "synthetic-0020.dcm"  # in chunk 2 of 5 (8 images per chunk)
    bad.write_bytes(bad.read_bytes()[:-2000])
    assert chunk_size(40) == 8
    out = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        _prepare(root, out, workers=1)
    assert str(err.value) == f"{bad}: file is truncated (ends inside a data element); pass --skip-bad to skip bad files"
    assert not out.exists() and not list(tmp_path.glob("cache.tmp-*"))
    chunks = sorted(p.name[:12] for p in (tmp_path / "cache.partial").glob("chunk_*.npz"))
    assert chunks == ["chunk_000000", "chunk_000001", "chunk_000002"]  # stopped at the bad chunk
    capsys.readouterr()

    cache = Cache.open(_prepare(root, out, workers=2, skip_bad=True))
    assert "resuming: 3/5 chunks (24/40 images) already decoded" in capsys.readouterr().err
    assert len(cache.manifest) == 39 and "synthetic-0020" not in set(cache.manifest["id"])
    assert cache.meta["skipped"] == [{"id": "synthetic-0020", "path": str(bad), "reason": str(err.value).split(";")[0]}]
    assert not (tmp_path / "cache.partial").exists()
    fresh = Cache.open(_prepare(root, tmp_path / "fresh", workers=1, skip_bad=True))
    assert fresh.meta["content_hash"] == cache.meta["content_hash"]
    np.testing.assert_array_equal(fresh.images, cache.images)


def test_fixing_a_file_redecodes_only_its_chunk(synthetic_rsna, synthetic_cache, tmp_path, capsys):
    root = tmp_path / "rsna"
    shutil.copytree(synthetic_rsna, root)
    bad = root / "stage_2_train_images" / "synthetic-0020.dcm"
    good = bad.read_bytes()
    bad.write_bytes(good[:-2000])
    out = tmp_path / "cache"
    with pytest.raises(DataError, match="synthetic-0020.dcm: file is truncated"):
        _prepare(root, out, workers=1, classes=root / "stage_2_detailed_class_info.csv")
    bad.write_bytes(good)  # fixed: new mtime, so only chunk 2 is stale
    capsys.readouterr()
    cache = Cache.open(_prepare(root, out, workers=1, classes=root / "stage_2_detailed_class_info.csv"))
    assert "resuming: 2/5 chunks (16/40 images) already decoded" in capsys.readouterr().err
    assert cache.meta["content_hash"] == Cache.open(synthetic_cache).meta["content_hash"]


def test_executor_runs_each_task_once_and_leaves_no_worker_behind():
    import multiprocessing

    from medclf.data.prepare import _executor, _wait_for_reapers

    before = set(multiprocessing.active_children())  # another test's server may be running
    tasks = list(range(-40, 0))
    with _executor(3, len(tasks)) as run:  # two forked children and this process share the tasks
        results = list(run(abs, tasks))
    assert sorted(results) == list(range(1, 41))
    _wait_for_reapers()
    assert set(multiprocessing.active_children()) <= before
