"""Sharded `prepare` (`--shard i/n`) and `prepare merge`: the merged cache is the unsharded one, byte for byte."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medclf.data.cache import Cache
from medclf.data.prepare import prepare_rsna
from medclf.data.shards import merge_shards, parse_shard, shard_rows
from medclf.errors import DataError


def _rsna(root: Path, out: Path, **kw) -> Path:
    return prepare_rsna(root / "stage_2_train_images", root / "stage_2_train_labels.csv", out, size=48,
                        workers=1, progress=False, **kw)


def _same_cache(a: Path, b: Path) -> None:
    assert Cache.open(a).meta["content_hash"] == Cache.open(b).meta["content_hash"]
    for name in ("images.npy", "manifest.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from medclf.data.synthetic import make_synthetic_rsna

    return make_synthetic_rsna(tmp_path_factory.mktemp("rsna") / "rsna", n_patients=24, size=64)


def test_parse_shard_and_blocks():
    assert parse_shard("1/4") == (1, 4) and parse_shard(" 0 / 1 ") == (0, 1)
    with pytest.raises(DataError, match=r"--shard 4/4: need 0 <= i < n \(parts are numbered 0 to n-1\)"):
        parse_shard("4/4")
    with pytest.raises(DataError, match="expected i/n"):
        parse_shard("2of3")
    assert [shard_rows(10, (i, 3)) for i in range(3)] == [slice(0, 4), slice(4, 7), slice(7, 10)]
    with pytest.raises(DataError, match="only 2 labelled images"):
        shard_rows(2, (2, 3))


def test_three_shards_merge_into_the_unsharded_cache(synthetic, tmp_path):
    whole = _rsna(synthetic, tmp_path / "whole")
    parts = [_rsna(synthetic, tmp_path / f"part{i}", shard=(i, 3)) for i in range(3)]
    sizes = [len(Cache.open(p).manifest) for p in parts]
    assert sizes == [8, 8, 8]
    whole_split = Cache.open(whole).manifest.set_index("id")["split"]
    for p in parts:  # each row has the split of the unsharded run: assigned on the full table
        m = Cache.open(p).manifest
        assert m["split"].tolist() == whole_split.loc[m["id"]].tolist()
    merged = merge_shards(list(reversed(parts)), tmp_path / "merged", progress=False)  # any order
    _same_cache(whole, merged)
    meta = Cache.open(merged).meta
    assert "shard" not in meta and len(meta["merged_from"]) == 3
    assert meta["input_fingerprint"] == Cache.open(whole).meta["input_fingerprint"]
    # the unsharded prepare recognises the merged cache as its own output
    _rsna(synthetic, merged)


def test_a_bad_file_is_skipped_the_same_way_sharded_or_not(synthetic, tmp_path):
    root = tmp_path / "rsna"
    shutil.copytree(synthetic, root)
    bad = root / "stage_2_train_images" / "synthetic-0017.dcm"  # in shard 1 of 2
    bad.write_bytes(bad.read_bytes()[:-2000])
    whole = _rsna(root, tmp_path / "whole", skip_bad=True)
    parts = [_rsna(root, tmp_path / f"part{i}", shard=(i, 2), skip_bad=True) for i in range(2)]
    assert [len(Cache.open(p).manifest) for p in parts] == [12, 11]
    merged = merge_shards(parts, tmp_path / "merged", progress=False)
    _same_cache(whole, merged)
    assert Cache.open(merged).meta["skipped"] == Cache.open(whole).meta["skipped"]


def test_merge_refuses_incomplete_or_foreign_sets(synthetic, tmp_path):
    parts = [_rsna(synthetic, tmp_path / f"part{i}", shard=(i, 2)) for i in range(2)]
    with pytest.raises(DataError, match=r"need shards 0\.\.1 once each; missing \[1\], repeated \[\]"):
        merge_shards(parts[:1], tmp_path / "merged", progress=False)
    other = _rsna(synthetic, tmp_path / "other", shard=(1, 2), seed=1)
    with pytest.raises(DataError, match="shard input_fingerprint differs"):
        merge_shards([parts[0], other], tmp_path / "merged", progress=False)
    whole = _rsna(synthetic, tmp_path / "whole")
    with pytest.raises(DataError, match="not a shard"):
        merge_shards([whole, parts[1]], tmp_path / "merged", progress=False)
    assert not (tmp_path / "merged").exists()


@pytest.mark.slow  # ~2 s CPU on the loaded 2-core machine: too slow for make test-fast
def test_real_rsna_sample_two_shards_through_the_cli(tmp_path, shared):
    root = shared("rsna-sample")
    from medclf.cli.main import app

    common = ["--images", str(root / "stage_2_train_images"), "--labels", str(root / "stage_2_train_labels.csv"),
              "--size", "64", "--workers", "2", "--quiet"]
    runner = CliRunner()
    for args in (["prepare", "rsna", *common, "--out", str(tmp_path / "whole")],
                 ["prepare", "rsna", *common, "--out", str(tmp_path / "s0"), "--shard", "0/2"],
                 ["prepare", "rsna", *common, "--out", str(tmp_path / "s1"), "--shard", "1/2"],
                 ["prepare", "merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "merged")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output, result.exception)
    assert Cache.open(tmp_path / "whole").meta["n"] == 110
    assert [Cache.open(tmp_path / s).meta["n"] for s in ("s0", "s1")] == [55, 55]
    _same_cache(tmp_path / "whole", tmp_path / "merged")
    np.testing.assert_array_equal(Cache.open(tmp_path / "merged").images, Cache.open(tmp_path / "whole").images)
