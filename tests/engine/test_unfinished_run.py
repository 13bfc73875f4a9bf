"""An unfinished run is refused where it would be used, with the command that finishes it, and the report says
so; a report never shows evaluations made with weights the run no longer holds (issue 22, item 3)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medclf.config import load_config
from medclf.engine.evaluate import evaluate_run
from medclf.engine.predict import predict_files
from medclf.engine.state import saved_epochs
from medclf.engine.train import train
from medclf.errors import MedclfError
from medclf.report.html import build_report

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
TINY = ["model.name=resnet18", "model.input_size=32", "data.batch_size=8", "train.lr=0.003", "train.warmup_epochs=0",
        "train.device=cpu", "train.max_steps_per_epoch=1", "eval.n_boot=0", "eval.ood_detector=false",
        "train.schedule=constant"]


def _medclf(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medclf", *args], capture_output=True, text=True, env=ENV,
                          timeout=300)


@pytest.fixture(scope="module")
def unfinished(tiny_cache, tmp_path_factory):
    """A run stopped (SIGKILL, no clean-up) after its first epochs of 200, with the message that refuses it."""
    run = tmp_path_factory.mktemp("unfinished") / "run"
    proc = subprocess.Popen([sys.executable, "-m", "medclf", "train", "--data", str(tiny_cache), "--out", str(run),
                             *TINY, "train.epochs=200"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=ENV)
    deadline = time.time() + 120
    while not (run / "history.csv").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    done = saved_epochs(run)
    command = shlex.join(["medclf", "train", "--data", str(tiny_cache), "--out", str(run), "--config",
                          str(run / "config.yaml"), "--resume"])
    message = (f"{run}: training is unfinished ({done} of 200 epochs; no threshold chosen on validation yet); "
               f"finish it with: {command}")
    return run, message, command


@pytest.mark.slow
def test_unfinished_run_is_refused_with_the_command_that_finishes_it(unfinished, tiny_cache, tmp_path):
    run, message, command = unfinished
    with pytest.raises(MedclfError) as err:
        evaluate_run(run, split="val", n_boot=0, progress=False)
    assert str(err.value) == message
    png = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(png)
    with pytest.raises(MedclfError, match="training is unfinished"):
        predict_files(run, [png])
    served = _medclf("serve", str(run), "--port", "0")
    assert served.returncode == 2 and served.stdout == ""  # no "serving on" banner before the error
    assert served.stderr.strip().splitlines() == [f"error: {message}"]
    page = build_report(run, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "Unfinished or out of date" in page and "training is unfinished" in page
    # the quoted command is the one that continues the run (stopped again here once it has resumed)
    proc = subprocess.Popen([sys.executable, "-m", *shlex.split(command)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    first = proc.stderr.readline()
    stale_lock = first.startswith(f"note: {run}: took over its stale lock")  # the killed run left its lock
    if stale_lock:
        first = proc.stderr.readline()
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert stale_lock and first.startswith(f"resuming {run} from epoch "), first


@pytest.mark.slow
def test_report_leaves_out_evaluations_of_older_weights(tiny_cache, tmp_path):
    run = tmp_path / "run"
    train(load_config(None, TINY + ["train.epochs=1"]), tiny_cache, run, progress=False)
    evaluate_run(run, split="val", n_boot=0, progress=False)
    before = json.loads((run / "metrics_val.json").read_text())["weights"]
    train(load_config(None, TINY + ["train.epochs=2"]), tiny_cache, run, resume=True, progress=False)
    evaluate_run(run, split="test", n_boot=0, progress=False)
    after = json.loads((run / "metrics_test.json").read_text())["weights"]
    assert len(before) == len(after) == 16 and before != after
    page = build_report(run).read_text(encoding="utf-8")
    assert "<h3>Split: test</h3>" in page and "<h3>Split: val</h3>" not in page
    assert (f"left out metrics_val.json: made with other weights than the run holds now (it was resumed or "
            f"retrained since); evaluate again: medclf evaluate {run} --split val") in page
