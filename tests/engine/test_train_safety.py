"""`train` and its run folder: only medclf's folders, one writer, --resume only with the same recipe, and one-line
errors for bad input (missing cache, unwritable places, broken last.pt), with nothing half-written."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from medclf.config import load_config
from medclf.engine.train import train
from medclf.errors import MedclfError
from medclf.outdirs import LOCK, folder_lock

REPO = Path(__file__).resolve().parents[2]
TINY = ["model.name=resnet18", "model.input_size=32", "data.batch_size=8", "train.lr=0.003", "train.warmup_epochs=0",
        "train.weight_decay=0.0", "train.device=cpu", "train.max_steps_per_epoch=1", "eval.n_boot=0"]


def _cfg(*extra: str):
    return load_config(None, TINY + list(extra))


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "medclf", *args], capture_output=True, text=True, env=env,
                          timeout=300, **kw)


@pytest.fixture(scope="module")
def run2(tiny_cache, scratch, request):
    """A finished 2-epoch run (cosine schedule); tests copy it before changing it."""
    out = scratch(request, "run2") / "run"
    train(_cfg("train.epochs=2"), tiny_cache, out, progress=False)
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def _stamps(run: Path) -> dict:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in run.iterdir()}


@pytest.mark.slow
def test_train_refuses_a_folder_medclf_did_not_make(tiny_cache, tmp_path):
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "mine.txt").write_text("x")
    (out / "config.yaml").write_text("mine: true\n")  # the user's own config.yaml does not make it a run
    with pytest.raises(MedclfError) as err:
        train(_cfg("train.epochs=1"), tiny_cache, out, progress=False)
    assert str(err.value).startswith(f"{out}: not empty and not made by medclf") and "--force" not in str(err.value)
    assert sorted(p.name for p in out.rglob("*")) == ["config.yaml", "mine.txt", "sub"]
    assert (out / "config.yaml").read_text() == "mine: true\n"


def test_train_refuses_a_folder_holding_another_projects_best_pt(tiny_cache, tmp_path):
    out = tmp_path / "other_project"
    out.mkdir()
    torch.save({"conv.weight": torch.ones(2, 2)}, out / "best.pt")  # a plain state dict: not medclf's checkpoint
    (out / "notes.txt").write_text("notes\n")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(MedclfError) as err:
        train(_cfg("train.epochs=1"), tiny_cache, out, progress=False)
    assert str(err.value).startswith(f"{out}: not empty and not made by medclf") and "--force" not in str(err.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # best.pt untouched, nothing added


@pytest.mark.slow
def test_ensemble_and_study_refuse_a_users_folder(tiny_cache, tmp_path):
    from medclf.ensemble import train_ensemble
    from medclf.study import run_study

    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("x")
    with pytest.raises(MedclfError, match="not empty and not made by medclf"):
        train_ensemble(_cfg("train.epochs=1"), tiny_cache, out, members=2, progress=False)
    study = tmp_path / "study.yaml"
    study.write_text(f"data: {tiny_cache}\nout: {out}\nvariants: {{a: {{}}}}\n")
    with pytest.raises(MedclfError, match="not empty and not made by medclf"):
        run_study(study, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


@pytest.mark.slow
def test_ensemble_and_study_refuse_a_second_writer(tiny_cache, tmp_path):
    from medclf.ensemble import train_ensemble
    from medclf.study import run_study

    busy = f"in use by another medclf process \\(pid {os.getpid()}, "
    with folder_lock(tmp_path / "ens", "ensemble"):
        with pytest.raises(MedclfError, match=f"^{tmp_path / 'ens'}: {busy}"):
            train_ensemble(_cfg("train.epochs=1"), tiny_cache, tmp_path / "ens", members=2, progress=False)
        assert sorted(p.name for p in (tmp_path / "ens").iterdir()) == [LOCK]
    study = tmp_path / "study.yaml"
    study.write_text(f"data: {tiny_cache}\nout: {tmp_path / 'study'}\nvariants: {{a: {{}}}}\n")
    with folder_lock(tmp_path / "study", "study"):
        with pytest.raises(MedclfError, match=f"^{tmp_path / 'study'}: {busy}"):
            run_study(study, progress=False)
        assert sorted(p.name for p in (tmp_path / "study").iterdir()) == [LOCK]


@pytest.mark.slow
def test_resume_refuses_a_changed_recipe_naming_the_keys(run2, tiny_cache, tmp_path):
    run = _copy(run2, tmp_path)
    before = _stamps(run)
    with pytest.raises(MedclfError) as err:
        train(_cfg("train.epochs=4", "loss.name=focal"), tiny_cache, run, resume=True, progress=False)
    assert str(err.value) == (f"--resume: {run} was trained with other settings (loss.name 'ce' -> 'focal', "
                              f"train.epochs 2 -> 4); they change the result, so resume with the run's own "
                              f"settings ({run / 'config.yaml'}) or train into a new --out")
    assert _stamps(run) == before  # refused before anything was written
    other = shutil.copytree(tiny_cache, tmp_path / "other")  # the same images, one label changed
    manifest = pd.read_csv(other / "manifest.csv", dtype=str, keep_default_na=False)
    manifest.loc[0, "label"] = str(1 - int(manifest.loc[0, "label"]))
    manifest.loc[0, "label_name"] = "pneumonia" if manifest.loc[0, "label"] == "1" else "normal"
    from medclf.data.cache import Cache, write_cache

    meta = {k: v for k, v in Cache.open(tiny_cache).meta.items() if k != "content_hash"}
    shutil.rmtree(other)
    write_cache(other, Cache.open(tiny_cache).images, manifest, meta)
    with pytest.raises(MedclfError, match=f"^--resume: {run} was trained on another cache \\(content hash "):
        train(_cfg("train.epochs=2"), other, run, resume=True, progress=False)


@pytest.mark.slow
def test_resume_of_a_finished_run_says_so_and_speed_keys_may_change(run2, tiny_cache, tmp_path, capsys):
    run = _copy(run2, tmp_path)
    history = (run / "history.csv").read_bytes()
    train(_cfg("train.epochs=2", "data.workers=1", "eval.batch_size=4"), tiny_cache, run, resume=True,
          progress=False)
    assert f"{run}: the run is finished (2 of 2 epochs); nothing to resume" in capsys.readouterr().err
    assert (run / "history.csv").read_bytes() == history


@pytest.mark.slow
def test_resume_says_where_it_continues_and_a_constant_schedule_may_grow(tiny_cache, tmp_path, capsys):
    run = tmp_path / "run"
    train(_cfg("train.epochs=1", "train.schedule=constant"), tiny_cache, run, progress=False)
    capsys.readouterr()
    train(_cfg("train.epochs=3", "train.schedule=constant"), tiny_cache, run, resume=True, progress=False)
    assert f"resuming {run} from epoch 2 of 3 (1 done)" in capsys.readouterr().err
    assert pd.read_csv(run / "history.csv")["epoch"].tolist() == [1, 2, 3]
    with pytest.raises(MedclfError, match=r"train.epochs 3 -> 2"):  # below what is done: not a continuation
        train(_cfg("train.epochs=2", "train.schedule=constant"), tiny_cache, run, resume=True, progress=False)


@pytest.mark.slow
def test_failed_resume_on_a_new_folder_leaves_nothing(tiny_cache, tmp_path):
    out = tmp_path / "new"
    with pytest.raises(MedclfError, match=f"^--resume: {out} holds no last.pt \\(nothing to resume\\); drop --resume"):
        train(_cfg("train.epochs=1"), tiny_cache, out, resume=True, progress=False)
    assert not out.exists()


@pytest.mark.slow
def test_missing_data_folder_says_no_such_folder_and_creates_nothing(tmp_path):
    with pytest.raises(MedclfError) as err:
        train(_cfg("train.epochs=1"), tmp_path / "nope", tmp_path / "run", progress=False)
    assert str(err.value).startswith(f"{tmp_path / 'nope'}: no such folder")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_second_writer_of_the_run_is_refused(tiny_cache, tmp_path):
    run = tmp_path / "run"
    with folder_lock(run, "run"):  # as a first `medclf train --out run` holds it
        with pytest.raises(MedclfError, match=f"^{run}: in use by another medclf process \\(pid {os.getpid()}, "):
            train(_cfg("train.epochs=1"), tiny_cache, run, progress=False)
        assert sorted(p.name for p in run.iterdir()) == [LOCK]  # the second wrote nothing
    train(_cfg("train.epochs=1"), tiny_cache, run, progress=False)
    assert not (run / LOCK).exists() and (run / "best.pt").is_file()


@pytest.mark.slow
def test_two_cli_trains_into_one_out(tiny_cache, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "medclf", "train", "--data", str(tiny_cache), "--out", str(run),
                              *TINY, "train.epochs=30"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 120
        while not (run / "config.yaml").exists() and time.time() < deadline:
            time.sleep(0.05)
        second = _cli("train", "--data", str(tiny_cache), "--out", str(run), *TINY, "train.epochs=1")
        assert second.returncode == 2
        assert second.stderr.strip().splitlines() == [
            f"error: {run}: {second.stderr.split(f'{run}: ', 1)[1].strip()}"]
        assert f"in use by another medclf process (pid {first.pid}, since " in second.stderr
    finally:
        first.kill()
        first.wait()


def _sigint_at_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_and_sigterm_say_how_to_resume(tiny_cache, tmp_path, sig, code, word):
    """Ctrl-C, and a scheduler's or container's SIGTERM alike, end training with one line saying how to resume,
    the lock released, exit 128 + the signal (issue 22, item 4)."""
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    # the child starts with SIGINT at its default, as a terminal gives it: a test suite started as a background job
    # (`make test &` in a script) ignores SIGINT, and a child inherits that, so Ctrl-C would never reach it
    proc = subprocess.Popen([sys.executable, "-m", "medclf", "train", "--data", str(tiny_cache), "--out", str(run),
                             *TINY, "train.epochs=200"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env, preexec_fn=_sigint_at_default)
    deadline = time.time() + 120
    while not (run / "history.csv").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"{word}: {run / 'last.pt'} holds epoch ") and last.endswith(
        " of 200; add --resume to the same command to continue"), err
    assert "Traceback" not in err and not (run / LOCK).exists()


@pytest.mark.slow
def test_unwritable_places_are_one_line(run2, tiny_cache, tmp_path):
    from PIL import Image

    from medclf.engine.evaluate import evaluate_run
    from medclf.engine.predict import predict_files
    from medclf.report.html import build_report

    (tmp_path / "file.txt").write_text("x")
    blocked = tmp_path / "file.txt" / "sub"
    r = _cli("train", "--data", str(tiny_cache), "--out", str(blocked), *TINY, "train.epochs=1")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: {blocked}: cannot create the folder "
                                             f"({tmp_path / 'file.txt'} is a file, not a folder)"]
    in_the_way = f"cannot write ({tmp_path / 'file.txt'} is a file, not a folder)"
    with pytest.raises(MedclfError) as err:
        build_report(run2, blocked / "report.html")
    assert str(err.value) == f"{blocked / 'report.html'}: {in_the_way}"
    Image.new("L", (32, 32)).save(tmp_path / "a.png")
    with pytest.raises(MedclfError) as err:
        predict_files(run2, [tmp_path / "a.png"], out=blocked / "p.csv", progress=False)
    assert str(err.value) == f"{blocked / 'p.csv'}: {in_the_way}"
    run = _copy(run2, tmp_path)
    (run / "predictions_test.csv").mkdir()  # a folder where evaluate writes its table
    with pytest.raises(MedclfError) as err:
        evaluate_run(run, n_boot=0, progress=False)
    table = run / "predictions_test.csv"
    assert str(err.value) == f"{table}: cannot write ({table} is a folder)"
    r = _cli("evaluate", str(run), "--n-boot", "0")
    assert (r.returncode, r.stderr.strip().splitlines()[-1]) == (2, f"error: {err.value}")  # after the bar
    assert "Traceback" not in r.stderr


def test_an_os_error_is_one_line_naming_the_path():
    from medclf.cli.main import os_error_line

    assert os_error_line(PermissionError(13, "Permission denied", "/data/run")) == "/data/run: permission denied"
    assert os_error_line(OSError(28, "No space left on device", "/tmp/a", None, "/tmp/b")) == \
        "/tmp/b: no space left on device"  # a rename's destination is the path the user named
    assert os_error_line(OSError(5, "Input/output error")) == "input/output error"


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "refused"])
def test_resume_with_a_broken_last_pt_is_one_line(run2, tiny_cache, tmp_path, damage):
    run = _copy(run2, tmp_path)
    last = run / "last.pt"
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
        expected = f"--resume: {last}: cannot read it ("
    else:  # pickled objects other than tensors: torch.load(weights_only=True) refuses them
        torch.save({"extra": {"train_state": {"epoch": 0}}, "obj": argparse.Namespace(a=1)}, last)
        expected = f"--resume: {last}: refused ("
    with pytest.raises(MedclfError) as err:
        train(_cfg("train.epochs=2"), tiny_cache, run, resume=True, progress=False)
    assert str(err.value).startswith(expected) and "\n" not in str(err.value)
    r = _cli("train", "--data", str(tiny_cache), "--out", str(run), "--resume", *TINY, "train.epochs=2")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [f"error: {err.value}"]


@pytest.mark.slow
def test_an_existing_out_file_is_replaced_only_with_force_and_a_link_never(run2, tmp_path):
    from PIL import Image

    from medclf.compare import compare_runs
    from medclf.engine.predict import predict_files
    from medclf.export import export_run
    from medclf.report.html import build_report

    Image.new("L", (32, 32)).save(tmp_path / "a.png")
    thesis = tmp_path / "thesis.onnx"
    thesis.write_bytes(b"my thesis\n")
    target = tmp_path / "target.csv"
    target.write_bytes(b"mine\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    exists = "already exists; pass --force to replace it, or choose another --out"
    for fmt in ("onnx", "torchscript"):
        r = _cli("export", str(run2), "--format", fmt, "--out", str(thesis))
        assert (r.returncode, r.stderr.strip().splitlines()) == (2, [f"error: {thesis}: {exists}"])
    results = tmp_path / "results.csv"
    results.write_bytes(b"earlier results\n")
    writers = {"predict": lambda out, force: predict_files(run2, [tmp_path / "a.png"], out=out, progress=False,
                                                           force=force),
               "report": lambda out, force: build_report(run2, out, force=force),
               "compare": lambda out, force: compare_runs([run2, run2], out=out, n_boot=10, force=force)}
    for name, write in writers.items():
        with pytest.raises(MedclfError) as err:
            write(results, False)
        assert str(err.value) == f"{results}: {exists}", name
        for force in (False, True):
            with pytest.raises(MedclfError) as err:
                write(link, force)
            assert str(err.value) == (f"{link}: is a symbolic link (to {target}); medclf neither replaces nor "
                                      "writes through links, so give the real path as --out"), name
    assert (thesis.read_bytes(), results.read_bytes(), target.read_bytes()) == (b"my thesis\n", b"earlier results\n",
                                                                                b"mine\n")
    assert link.is_symlink()
    export_run(run2, "onnx", out=thesis, force=True)  # --force replaces a plain file
    assert thesis.read_bytes()[:4] != b"my t"
    predict_files(run2, [tmp_path / "a.png"], out=results, progress=False, force=True)
    assert results.read_text().startswith("path,")
