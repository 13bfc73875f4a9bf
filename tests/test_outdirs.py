"""`medclf.outdirs`: which folders medclf may write, the current-folder guard, and the one-writer lock."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

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


def _tree(path):
    """Every file and folder under `path` with its bytes (None for folders), to compare before and after."""
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else None) for p in sorted(path.rglob("*"))}


def test_a_medclf_file_name_alone_does_not_make_a_folder_medclfs(tmp_path):
    import torch

    lookalikes = {"cache": {"cache.json": b'{"etag": "abc"}', "images.npy": b"x", "manifest.csv": b"a\n"},
                  "run_cfg": {"config.yaml": b"{}", "data_summary.json": b"{}"},
                  "ensemble": {"ensemble.json": b"{}", "plan.json": b"{}"}, "study": {"study.json": b"{}"},
                  "member": {"train_rows.npy": b"x"}, "empty_pt": {"last.pt": b""}}
    for name, files in lookalikes.items():
        (tmp_path / name).mkdir()
        for n, data in files.items():
            (tmp_path / name / n).write_bytes(data)
    (tmp_path / "run").mkdir()  # another project's checkpoint: a plain state dict, no medclf format or contract
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "run" / "best.pt")
    (tmp_path / "run" / "notes.txt").write_text("mine\n")
    before = _tree(tmp_path)
    assert [folder_kind(tmp_path / n) for n in [*lookalikes, "run"]] == [None] * 7
    for kind in ("cache", "run"):
        with pytest.raises(MedclfError) as err:
            claim_output_dir(tmp_path / "run", kind, replace=kind == "cache")
        assert str(err.value).startswith(f"{tmp_path / 'run'}: not empty and not made by medclf")
        assert "--force" not in str(err.value)
    assert _tree(tmp_path) == before  # byte-identical


def test_folders_without_a_marker_are_recognised_by_what_their_files_hold(tmp_path, tiny_cache):
    import shutil

    import torch

    cache = Path(shutil.copytree(tiny_cache, tmp_path / "cache"))
    (cache / MARKER).unlink()  # as made before markers
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"format": "medclf-checkpoint", "contract": {"input_size": 32}}, run / "last.pt")
    (tmp_path / "ens").mkdir()
    (tmp_path / "ens" / "ensemble.json").write_text('{"format": "medclf-ensemble"}')
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "study.json").write_text('{"study": "s.yaml", "data": "c", "split": "test"}')
    member = tmp_path / "marked_ens" / "members" / "0"
    claim_output_dir(tmp_path / "marked_ens", "ensemble")
    member.mkdir(parents=True)
    (member / "train_rows.npy").write_bytes(b"x")  # a member of a medclf ensemble, before its training starts
    legacy_study = tmp_path / "legacy_study"
    shutil.copytree(run, legacy_study / "a")
    names = ["cache", "run", "ens", "study", "marked_ens/members/0", "legacy_study"]
    assert [folder_kind(tmp_path / n) for n in names] == ["cache", "run", "ensemble", "study", "run", "study"]
    (tmp_path / "user_config").mkdir()
    (tmp_path / "user_config" / "config.yaml").write_text("mine: 1\n")  # config.yaml alone is not a run
    assert folder_kind(tmp_path / "user_config") is None


def test_another_kind_is_refused(tmp_path, tiny_cache):
    from medclf.config import load_config, save_config
    from medclf.data.cache import Cache
    from medclf.data.summary import data_summary

    run = tmp_path / "run"
    run.mkdir()
    save_config(load_config(None, []), run / "config.yaml")
    (run / "data_summary.json").write_text(json.dumps(data_summary(Cache.open(tiny_cache))))
    assert folder_kind(run) == "run"  # what `train` writes first, before its first checkpoint
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


def _killed_writers_lock(run, pid: int) -> None:
    """The lock a medclf writer left when killed, its pid since given to `pid` (records the writer's identity)."""
    writer = subprocess.run([sys.executable, "-c", "import json, os, sys; from medclf.outdirs import FolderLock; "
                             "lock = FolderLock(sys.argv[1], 'run').acquire(); os._exit(0)", str(run)],
                            capture_output=True, text=True, check=True)  # exits holding it, as kill -9 would
    assert writer.stderr == ""
    info = json.loads((run / LOCK).read_text())
    assert {"pid_start", "cmdline"} <= set(info)
    (run / LOCK).write_text(json.dumps({**info, "pid": pid}))


@pytest.mark.slow
def test_a_lock_whose_pid_is_now_another_program_is_stale(tmp_path, capfd):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        for pid, program in ((sleeper.pid, "sleep 60"), (1, None)):
            run = tmp_path / f"run{pid}"
            _killed_writers_lock(run, pid)
            with folder_lock(run, "run"):
                assert json.loads((run / LOCK).read_text())["pid"] == os.getpid()
            note = capfd.readouterr().err.strip()
            assert note.startswith(f"note: {run}: took over its stale lock {run / LOCK} (pid {pid} is now `")
            assert note.endswith(", not the medclf process that wrote the lock)")
            if program:
                assert f"pid {pid} is now `{program}`, " in note
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_live_writers_lock_is_held_and_the_message_names_its_command(tmp_path):
    run = tmp_path / "run"
    with folder_lock(run, "run"):
        with pytest.raises(MedclfError) as err:
            FolderLock(run, "run").acquire()
    cmdline = " ".join(Path("/proc/self/cmdline").read_bytes().decode().split("\0")).strip()
    assert f", running `{cmdline[:300]}`); wait for it to finish" in str(err.value)


def test_an_existing_output_file_needs_force_and_a_link_is_refused(tmp_path):
    from medclf.outdirs import check_output_file

    mine = tmp_path / "thesis.onnx"
    assert check_output_file(mine) == mine  # new: fine
    mine.write_bytes(b"my thesis")
    with pytest.raises(MedclfError) as err:
        check_output_file(mine)
    assert str(err.value) == f"{mine}: already exists; pass --force to replace it, or choose another --out"
    assert check_output_file(mine, force=True) == mine
    link = tmp_path / "link.csv"
    link.symlink_to(mine)
    for force in (False, True):
        with pytest.raises(MedclfError) as err:
            check_output_file(link, force=force)
        assert str(err.value) == (f"{link}: is a symbolic link (to {mine}); medclf neither replaces nor writes "
                                  "through links, so give the real path as --out")
    with pytest.raises(MedclfError, match=f"^{tmp_path}: is a folder; --out names the file to write$"):
        check_output_file(tmp_path, force=True)
    assert mine.read_bytes() == b"my thesis" and link.is_symlink()


def test_a_symlinked_out_folder_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    for kind, replace in (("cache", True), ("run", False)):
        link_message = f"^{tmp_path / 'link'}: is a symbolic link \\(to {tmp_path / 'empty'}\\)"
        with pytest.raises(MedclfError, match=link_message):
            claim_output_dir(tmp_path / "link", kind, replace=replace)
    assert (tmp_path / "link").is_symlink() and list((tmp_path / "empty").iterdir()) == []
