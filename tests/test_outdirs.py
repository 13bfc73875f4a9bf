"""`medclf.outdirs`: which folders medclf may write, the current-folder guard, and the one-writer lock."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

import medclf.data.cache  # noqa: F401  (registers how a cache folder is recognised)
from medclf.errors import MedclfError
from medclf.outdirs import LOCK, MARKER, FolderLock, claim_output_dir, folder_kind, folder_lock, lock_path


def test_a_new_or_empty_folder_is_claimed_and_marked(tmp_path):
    assert claim_output_dir(tmp_path / "new" / "ens", "ensemble") is False
    assert json.loads((tmp_path / "new" / "ens" / MARKER).read_text())["kind"] == "ensemble"
    (tmp_path / "empty").mkdir()
    assert claim_output_dir(tmp_path / "empty", "study") is False
    assert claim_output_dir(tmp_path / "empty", "study") is True  # now it is medclf's study
    assert claim_output_dir(tmp_path / "run", "run") is False
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == []  # a run's own files are its marker
    assert claim_output_dir(tmp_path / "cache", "cache", replace=True) is False
    assert not (tmp_path / "cache").exists()  # replace=True only checks


def test_a_users_folder_is_refused_whatever_it_holds(tmp_path):
    user = tmp_path / "mine"
    (user / "sub").mkdir(parents=True)
    (user / "sub" / "mine.txt").write_text("x")
    for kind, replace in (("cache", True), ("run", False), ("ensemble", False), ("study", False)):
        with pytest.raises(MedclfError) as err:
            claim_output_dir(user, kind, replace=replace)
        assert str(err.value).startswith(f"{user}: not empty and not made by medclf")
        assert "--force" not in str(err.value)
    assert sorted(p.name for p in user.rglob("*")) == ["mine.txt", "sub"]  # nothing added, nothing removed


def test_folders_made_before_markers_are_recognised_by_their_own_files(tmp_path):
    files = {"cache": ["cache.json"], "run": ["last.pt"], "ensemble": ["config.yaml", "data_summary.json",
             "plan.json"], "study": ["study.json"], "member": ["train_rows.npy"]}
    for name, names in files.items():
        (tmp_path / name).mkdir()
        for n in names:
            (tmp_path / name / n).write_text("{}")
    assert [folder_kind(tmp_path / n) for n in files] == ["cache", "run", "ensemble", "study", "run"]
    legacy_study = tmp_path / "legacy_study"
    (legacy_study / "a").mkdir(parents=True)
    (legacy_study / "a" / "best.pt").write_text("")
    assert folder_kind(legacy_study) == "study"
    (tmp_path / "user_config").mkdir()
    (tmp_path / "user_config" / "config.yaml").write_text("mine: 1\n")  # config.yaml alone is not a run
    assert folder_kind(tmp_path / "user_config") is None


def test_another_kind_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_text("")
    with pytest.raises(MedclfError, match=f"^{run}: holds a medclf run, not a cache; choose another --out$"):
        claim_output_dir(run, "cache", replace=True)
    claim_output_dir(tmp_path / "ens", "ensemble")
    with pytest.raises(MedclfError, match="holds a medclf ensemble, not a run"):
        claim_output_dir(tmp_path / "ens", "run")


def test_the_current_folder_and_its_parents_are_refused(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for out in (".", "..", str(work), "./sub/.."):
        with pytest.raises(MedclfError, match="is the current folder or one above it"):
            claim_output_dir(out, "run")
    assert list(work.iterdir()) == []
    assert claim_output_dir("sub", "run") is False  # a folder below it is fine


def test_a_file_in_the_way_is_one_line_naming_it(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(MedclfError) as err:
        claim_output_dir(tmp_path / "file.txt" / "sub", "run")
    assert str(err.value) == (f"{tmp_path / 'file.txt' / 'sub'}: cannot create the folder "
                              f"({tmp_path / 'file.txt'} is a file, not a folder)")
    with pytest.raises(MedclfError, match="exists and is not a folder"):
        claim_output_dir(tmp_path / "file.txt", "run")


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    run = tmp_path / "run"
    claim_output_dir(run, "run")
    with folder_lock(run, "run") as held:
        assert held.file == run / LOCK
        info = json.loads(held.file.read_text())
        assert (info["pid"], info["host"]) == (os.getpid(), socket.gethostname())
        with pytest.raises(MedclfError) as err:
            FolderLock(run, "run").acquire()
        assert str(err.value).startswith(f"{run}: in use by another medclf process (pid {os.getpid()}, since ")
        assert str(err.value).endswith(f"if that process is gone, delete {run / LOCK}")
    assert not (run / LOCK).exists()  # released
    assert lock_path(tmp_path / "cache", "cache") == tmp_path / "cache.lock"  # caches are renamed: beside


@pytest.mark.slow
def test_a_dead_processs_lock_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # exited and reaped: no process has this pid now (reuse within the test is unlikely)
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "earlier",
                                        "token": "old"}))
    assert claim_output_dir(run, "run") is False  # a stale lock alone leaves the folder empty
    with folder_lock(run, "run"):
        assert json.loads((run / LOCK).read_text())["pid"] == os.getpid()
    # a lock held on another machine cannot be judged from here: refused, naming the host
    (run / LOCK).write_text(json.dumps({"pid": pid, "host": "elsewhere.example", "started": "earlier"}))
    with pytest.raises(MedclfError, match=f"pid {pid} on elsewhere.example"):
        FolderLock(run, "run").acquire()


def test_a_file_that_is_not_a_medclf_lock_is_never_removed(tmp_path):
    mine = tmp_path / "cache.lock"  # a user's file that happens to have the name of a cache's lock
    mine.write_text("my notes\n")
    with pytest.raises(MedclfError, match=f"{mine} exists and is not a medclf lock"):
        FolderLock(tmp_path / "cache", "cache").acquire()
    assert mine.read_text() == "my notes\n"
    empty = tmp_path / "other.lock"  # created, never written: its writer was killed in between
    empty.touch()
    with pytest.raises(MedclfError, match="is being written"):
        FolderLock(tmp_path / "other", "cache").acquire()
    os.utime(empty, (0, 0))  # long ago: stale
    with folder_lock(tmp_path / "other", "cache"):
        assert json.loads(empty.read_text())["pid"] == os.getpid()
