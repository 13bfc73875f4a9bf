"""`prepare` and the user's files: only medclf's own folders are replaced, never the current folder, one writer
at a time, leftovers of killed runs cleared, labels that cannot pull files from outside `--images`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medclf.data.cache import Cache
from medclf.data.prepare import prepare_folder, prepare_rsna
from medclf.errors import DataError, MedclfError
from medclf.outdirs import MARKER, folder_lock

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def folder(tmp_path):
    """8 PNGs of 4 patients (2 per class) and their labels CSV."""
    root = tmp_path / "imgs"
    root.mkdir()
    rows = ["path,label,patient_id"]
    for i in range(8):
        Image.fromarray(np.full((16, 16), 20 * i, np.uint8)).save(root / f"img{i}.png")
        rows.append(f"img{i}.png,{'normal' if i % 2 else 'pneumonia'},p{i // 2}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return root, tmp_path / "labels.csv"


def _prepare(folder, out, **kw):
    root, labels = folder
    return prepare_folder(root, labels, out, size=16, val=0.25, test=0.0, workers=1, progress=False, **kw)


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "medclf", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def test_force_never_replaces_a_folder_medclf_did_not_make(folder, tmp_path):
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "mine.txt").write_text("x\n")
    for force in (False, True):
        with pytest.raises(MedclfError) as err:
            _prepare(folder, out, force=force)
        assert str(err.value).startswith(f"{out}: not empty and not made by medclf (no {MARKER} marker")
        assert "--force" not in str(err.value)
    assert (out / "sub" / "mine.txt").read_text() == "x\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "labels.csv", "out"]  # nothing half-written


def test_an_empty_folder_is_used_and_a_cache_made_before_markers_is_replaced_with_force(folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    cache = Cache.open(_prepare(folder, out))  # no --force needed for an empty folder
    assert len(cache.manifest) == 8 and json.loads((out / MARKER).read_text())["kind"] == "cache"
    (out / MARKER).unlink()  # as a cache written before this change
    with pytest.raises(DataError, match="already exists and was made from other inputs \\(changed: size\\); "
                                        "pass --force"):
        prepare_folder(*folder, out, size=24, val=0.25, test=0.0, workers=1, progress=False)
    prepare_folder(*folder, out, size=24, val=0.25, test=0.0, workers=1, progress=False, force=True)
    assert Cache.open(out).size == 24 and (out / MARKER).is_file()


def test_a_run_is_never_replaced_by_a_cache(folder, tmp_path):
    import torch

    run = tmp_path / "run"
    run.mkdir()
    torch.save({"format": "medclf-checkpoint", "contract": {}}, run / "best.pt")
    before = (run / "best.pt").read_bytes()
    with pytest.raises(MedclfError, match=f"{run}: holds a medclf run, not a cache"):
        _prepare(folder, run, force=True)
    assert (run / "best.pt").read_bytes() == before


def _tree(path: Path) -> dict:
    """Every file and folder under `path` with its bytes (None for folders), to compare before and after."""
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else None) for p in sorted(path.rglob("*"))}


@pytest.mark.slow
def test_a_lookalike_folder_is_refused_whatever_the_flags_and_left_byte_identical(synthetic_rsna, tmp_path):
    webapp = tmp_path / "lookalike" / "webapp"  # another program's folder holding a file with a medclf name
    (webapp / "photos").mkdir(parents=True)
    (webapp / "cache.json").write_text('{"etag":"abc"}\n')
    (webapp / "thesis.txt").write_text("precious\n")
    (webapp / "photos" / "p1.jpg").write_text("img\n")
    before = _tree(tmp_path / "lookalike")
    for force in (False, True):  # in this process (the sources under test), then as a user types it
        with pytest.raises(MedclfError, match=f"^{webapp}: not empty and not made by medclf"):
            prepare_rsna(synthetic_rsna / "stage_2_train_images", synthetic_rsna / "stage_2_train_labels.csv",
                         webapp, size=32, workers=1, progress=False, force=force)
    args = ["prepare", "rsna", "--images", str(synthetic_rsna / "stage_2_train_images"), "--labels",
            str(synthetic_rsna / "stage_2_train_labels.csv"), "--out", str(webapp), "--size", "32", "--workers", "1",
            "--quiet"]
    for force in ([], ["--force"]):
        r = _cli(*args, *force)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().splitlines() == [
            f"error: {webapp}: not empty and not made by medclf (no {MARKER} marker, no cache files); medclf only "
            "writes into or replaces folders it made, so choose another --out, or empty or remove that folder "
            "yourself"]
    assert _tree(tmp_path / "lookalike") == before
    assert sorted(p.name for p in (tmp_path / "lookalike").iterdir()) == ["webapp"]  # nothing beside it either


def test_force_replaces_a_cache_only_while_it_holds_nothing_else(folder, tmp_path):
    out = tmp_path / "out"
    _prepare(folder, out)
    (out / "thesis.txt").write_text("precious\n")  # the user's file put into medclf's cache folder
    (out / "photos").mkdir()
    before = _tree(out)
    with pytest.raises(MedclfError) as err:
        prepare_folder(*folder, out, size=24, val=0.25, test=0.0, workers=1, progress=False, force=True)
    assert str(err.value) == (f"{out}: also holds files medclf did not write (photos/, thesis.txt); medclf "
                              "replaces only its own files, so move those out of the folder or choose another --out")
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "labels.csv", "out"]  # nothing half-written


def test_out_a_symlink_is_refused_and_stays_a_link(folder, tmp_path):
    (tmp_path / "empty").mkdir()
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "empty")
    with pytest.raises(MedclfError) as err:
        _prepare(folder, link, force=True)
    assert str(err.value) == (f"{link}: is a symbolic link (to {tmp_path / 'empty'}); medclf neither replaces nor "
                              "writes through links, so give the real path as --out")
    assert link.is_symlink() and list((tmp_path / "empty").iterdir()) == []


def test_out_the_current_folder_or_above_is_refused_leaving_nothing(folder, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for out in (".", ".."):
        with pytest.raises(MedclfError, match="is the current folder or one above it"):
            _prepare(folder, Path(out), force=True)
    assert list(work.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "labels.csv", "work"]


@pytest.mark.slow
def test_cli_out_dot_is_one_line_exit_2(folder, tmp_path):
    root, labels = folder
    work = tmp_path / "work"
    work.mkdir()
    r = _cli("prepare", "folder", "--images", str(root), "--labels", str(labels), "--out", ".", "--size", "16",
             "--workers", "1", "--quiet", cwd=work)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "error: .: is the current folder or one above it; medclf writes a cache into a folder of its own "
        "(e.g. --out cache)"]
    assert list(work.iterdir()) == []


def test_a_second_writer_is_refused_while_the_first_holds_the_cache(folder, tmp_path):
    out = tmp_path / "cache"
    with folder_lock(out, "cache"):  # as another prepare into the same --out would hold it
        with pytest.raises(MedclfError, match=f"^{out}: in use by another medclf process \\(pid {os.getpid()}, "):
            _prepare(folder, out)
        assert not out.exists() and not (tmp_path / "cache.partial").exists()
    assert len(Cache.open(_prepare(folder, out)).manifest) == 8
    assert not (tmp_path / "cache.lock").exists()


def test_leftovers_of_a_killed_prepare_are_removed_by_the_next_run(folder, tmp_path):
    out = tmp_path / "cache"
    tmp = tmp_path / "cache.tmp-k1ll3d00"  # what a prepare killed while writing leaves (cache_writer's names)
    tmp.mkdir()
    (tmp / MARKER).write_text('{"kind": "cache"}')
    np.save(tmp / "images.npy", np.zeros((2, 4, 4), np.uint8))
    (tmp / ".manifest.csv.abc.tmp").write_text("")
    old_tmp = tmp_path / "cache.tmp-0ldc0de0"  # one from before markers: only cache files
    old_tmp.mkdir()
    np.save(old_tmp / "images.npy", np.zeros((2, 4, 4), np.uint8))
    aside = tmp_path / "cache.old-m0v3d000"  # killed between moving the old cache aside and removing it
    (aside / "cache").mkdir(parents=True)
    (aside / "cache" / "cache.json").write_text("{}")
    (aside / "cache" / MARKER).write_text('{"kind": "cache"}')  # a cache it moved aside is marked medclf's
    mine = tmp_path / "cache.tmp-notes"  # a user's folder that merely looks like one
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    _prepare(folder, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "cache.tmp-notes", "imgs", "labels.csv"]
    assert (mine / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_unwritable_out_is_one_line(folder, tmp_path):
    root, labels = folder
    (tmp_path / "file.txt").write_text("x")
    r = _cli("prepare", "folder", "--images", str(root), "--labels", str(labels), "--out",
             str(tmp_path / "file.txt" / "sub"), "--workers", "1", "--quiet")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: {tmp_path / 'file.txt' / 'sub'}: cannot create the folder "
                                             f"({tmp_path / 'file.txt'} is a file, not a folder)"]
    r = _cli("prepare", "folder", "--images", str(root), "--labels", str(labels), "--out", "/proc/medclf-cache",
             "--workers", "1", "--quiet")
    assert r.returncode == 2  # /proc refuses new files with ENOENT
    assert r.stderr.strip().splitlines() == ["error: /proc/medclf-cache: cannot create its lock file "
                                             "/proc/medclf-cache.lock (no such file or directory)"]


def test_labels_with_a_header_and_no_rows_name_the_file(folder, tmp_path, synthetic_rsna):
    root, _ = folder
    empty = tmp_path / "empty.csv"
    empty.write_text("path,label,patient_id\n")
    with pytest.raises(DataError, match=f"^{empty}: no label rows \\(only the header\\)$"):
        _prepare((root, empty), tmp_path / "c1")
    rsna_empty = tmp_path / "rsna_empty.csv"
    rsna_empty.write_text("patientId,x,y,width,height,Target\n")
    with pytest.raises(DataError, match=f"^{rsna_empty}: no label rows \\(only the header\\)$"):
        prepare_rsna(synthetic_rsna / "stage_2_train_images", rsna_empty, tmp_path / "c2", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.csv", "imgs", "labels.csv", "rsna_empty.csv"]


def test_label_paths_must_stay_inside_images_unless_allowed(folder, tmp_path):
    root, labels = folder
    outside = tmp_path / "secret"
    outside.mkdir()
    Image.fromarray(np.full((16, 16), 200, np.uint8)).save(outside / "x.png")
    rows = labels.read_text().splitlines()
    for listed in ("sub/../../secret/x.png", str(outside / "x.png"), "../secret/x.png"):
        bad = tmp_path / "bad.csv"
        bad.write_text("\n".join(rows + [f"{listed},normal,p9"]) + "\n")
        with pytest.raises(DataError) as err:
            _prepare((root, bad), tmp_path / "cache")
        assert str(err.value) == (f"bad.csv:10: path {listed!r} is outside --images {root}; "
                                  "pass --allow-outside-images to read files there")
        assert not (tmp_path / "cache").exists()
    cache = Cache.open(_prepare((root, bad), tmp_path / "cache", allow_outside_images=True))
    assert len(cache.manifest) == 9 and cache.meta["params"]["allow_outside_images"] is True
    inside = tmp_path / "inside.csv"  # an absolute path that stays inside --images is fine
    inside.write_text("\n".join(rows[:-1] + [f"{root / 'img7.png'},normal,p3"]) + "\n")
    assert len(Cache.open(_prepare((root, inside), tmp_path / "cache2")).manifest) == 8


@pytest.mark.slow
def test_cli_allow_outside_images_flag(folder, tmp_path):
    root, labels = folder
    outside = tmp_path / "x.png"
    Image.fromarray(np.full((16, 16), 200, np.uint8)).save(outside)
    bad = tmp_path / "bad.csv"
    bad.write_text(labels.read_text() + "../x.png,normal,p9\n")
    args = ["prepare", "folder", "--images", str(root), "--labels", str(bad), "--out", str(tmp_path / "cache"),
            "--size", "16", "--val", "0.25", "--test", "0", "--workers", "1", "--quiet"]
    r = _cli(*args)
    assert r.returncode == 2 and "path '../x.png' is outside --images" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = _cli(*args, "--allow-outside-images")
    assert r.returncode == 0, r.stderr
    assert len(Cache.open(tmp_path / "cache").manifest) == 9


def test_symlinks_inside_images_that_lead_outside_are_refused_unless_allowed(folder, tmp_path):
    root, labels = folder
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.fromarray(np.full((16, 16), 200, np.uint8)).save(outside / "secret.png")
    (root / "rel.png").symlink_to("../outside/secret.png")  # relative link
    (root / "abs.png").symlink_to(outside / "secret.png")  # absolute link
    (root / "linked").symlink_to(outside)  # a linked folder
    (root / "ok.png").symlink_to("img0.png")  # a link that stays inside is fine
    rows = labels.read_text().splitlines()
    for listed in ("rel.png", "abs.png", "linked/secret.png", str(root / "abs.png")):
        bad = tmp_path / "bad.csv"
        bad.write_text("\n".join(rows + [f"{listed},normal,p9"]) + "\n")
        with pytest.raises(DataError) as err:
            _prepare((root, bad), tmp_path / "cache")
        assert str(err.value) == (f"bad.csv:10: path {listed!r} (a symbolic link to {outside / 'secret.png'}) is "
                                  f"outside --images {root}; pass --allow-outside-images to read files there")
        assert not (tmp_path / "cache").exists()
    cache = Cache.open(_prepare((root, bad), tmp_path / "cache", allow_outside_images=True))
    assert len(cache.manifest) == 9
    fine = tmp_path / "fine.csv"
    fine.write_text("\n".join(rows + ["ok.png,normal,p9"]) + "\n")
    assert len(Cache.open(_prepare((root, fine), tmp_path / "cache2")).manifest) == 9
