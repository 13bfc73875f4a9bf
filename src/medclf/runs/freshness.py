"""Whether a run's files describe the weights it holds now: training finished, evaluations made with them.

An unfinished run (training stopped before its last epoch: killed, out of time) has a `best.pt` whose threshold
was never chosen on validation and whose OOD detector was never fitted, so it is refused where it would be used
(`open_run`: evaluate, predict, explain, serve, export) with the command that finishes it, and the report says
so. Every metrics file records the fingerprint of the weights that made it (`weights`), so a report never
mixes evaluations made before and after the weights changed (a resume, a retrain into the same folder).
"""

from __future__ import annotations

import functools
import hashlib
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medclf.errors import MedclfError
from medclf.io import read_json
from medclf.runs.layout import RunDir

WEIGHTS_KEY = "weights"  # the metrics-file entry holding `weights_fingerprint` of the run that evaluated


@dataclass(frozen=True)
class Unfinished:
    """A run whose training stopped after `done` of `total` epochs; `command` finishes it."""

    run: Path
    done: int
    total: int
    command: str

    def message(self) -> str:
        return (f"{self.run}: training is unfinished ({self.done} of {self.total} epochs; no threshold chosen on "
                f"validation yet); finish it with: {self.command}")


def training_status(run_dir: str | Path) -> Unfinished | None:
    """None when the run finished training (or holds no last.pt to tell: an ensemble, a checkpoint written by
    hand); else what is missing and the command that finishes it. Reads last.pt memory-mapped."""
    rd = RunDir(run_dir)
    if rd.is_ensemble or not rd.last.is_file():
        return None
    payload = _read_last(rd.last)
    state = (payload.get("extra") or {}).get("train_state") or {}
    train_cfg = (payload.get("config") or {}).get("train") or {}
    if "epoch" not in state or not isinstance(train_cfg.get("epochs"), int):
        return None
    done, total, patience = int(state["epoch"]) + 1, train_cfg["epochs"], train_cfg.get("patience")
    stopped = patience is not None and (state.get("stopper") or {}).get("bad_epochs", 0) > patience
    if done >= total or stopped:
        return None
    return Unfinished(rd.path, done, total, resume_command(rd))


def check_finished(run_dir: str | Path) -> None:
    """Refuse an unfinished run (`MedclfError` with the command that finishes it)."""
    unfinished = training_status(run_dir)
    if unfinished is not None:
        raise MedclfError(unfinished.message())


def resume_command(rd: RunDir) -> str:
    """The `medclf train` line that continues the run with its own settings on its own cache."""
    cache = rd.cache_path()
    return shlex.join(["medclf", "train", "--data", str(cache) if cache else "CACHE", "--out", str(rd.path),
                       "--config", str(rd.config_path), "--resume"])


def _read_last(path: Path) -> dict[str, Any]:
    import pickle

    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError):
        return {}  # unreadable: resuming says why; opening the run goes on with best.pt
    return payload if isinstance(payload, dict) else {}


def weights_fingerprint(run_dir: str | Path) -> str | None:
    """Hash of the files that decide the run's outputs (best.pt; an ensemble's ensemble.json and its members'
    best.pt); None when there are none. Content, not dates: a copied run keeps its fingerprint."""
    rd = RunDir(run_dir)
    try:
        files = ([rd.ensemble_path, *(rd.member(m).best for m in rd.ensemble_spec()["members"])]
                 if rd.is_ensemble else [rd.best])
    except MedclfError:
        return None
    if not all(f.is_file() for f in files):
        return None
    return _content_hash(tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files))


@functools.lru_cache(maxsize=16)
def _content_hash(stamped_files: tuple[tuple[str, int, int], ...]) -> str:
    """sha256 of the files' bytes. Keyed by (path, mtime, size) as well, so one process (a report asks in two
    sections; demo evaluates then reports) reads an unchanged ensemble's weights once, and a rewritten file is
    hashed again."""
    digest = hashlib.sha256()
    for path, _, _ in stamped_files:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def current_evaluations(run_dir: str | Path) -> tuple[dict[str, Path], list[str]]:
    """(tag -> metrics file made with the run's current weights, tags of those made with other weights).
    Files without a fingerprint (written before it was recorded) count as current: nothing tells otherwise."""
    rd = RunDir(run_dir)
    found = rd.evaluated()
    now = weights_fingerprint(rd.path) if found else None
    current, stale = {}, []
    for tag, path in found.items():
        try:
            made_with = read_json(path).get(WEIGHTS_KEY)
        except (OSError, ValueError, AttributeError):
            made_with = None
        if made_with and now and made_with != now:
            stale.append(tag)
        else:
            current[tag] = path
    return current, stale


def stale_note(run_dir: str | Path, stale: list[str]) -> str | None:
    """The sentence a report shows for evaluations made with other weights, with the commands that redo them."""
    if not stale:
        return None
    redo = "; ".join(f"medclf evaluate {RunDir(run_dir).path} --split {tag.split('@')[0]}" for tag in stale)
    return (f"left out {', '.join(RunDir.METRICS_PREFIX + t + '.json' for t in stale)}: made with other weights "
            f"than the run holds now (it was resumed or retrained since); evaluate again: {redo}")
