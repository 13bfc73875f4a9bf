"""Fixtures shared by the whole suite: real-data location and a tiny learnable cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test when that data is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path}")
    return path


@pytest.fixture(scope="session")
def scratch(tmp_path_factory):
    """`scratch(request, name)`: a folder deleted when the asking fixture ends.

    For module- and session-scoped runs: their checkpoints add up to gigabytes over a suite, and CI shares its disk.
    """
    def make(request: pytest.FixtureRequest, name: str) -> Path:
        path = tmp_path_factory.mktemp(name)
        request.addfinalizer(lambda: shutil.rmtree(path, ignore_errors=True))
        return path

    return make


@pytest.fixture(scope="session")
def shared():
    """`shared("rsna-sample")` -> path under ../shared/data, or skip the test when it is absent (session-scoped,
    so module fixtures that train on real data can ask for it too)."""
    return shared_data


def make_tiny_images(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, list]:
    """Grey noise; positives carry a bright square blob, so a tiny CNN learns them in a few steps."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 3 == 0).astype(np.int64)
    images = rng.integers(40, 90, size=(n, size, size)).astype(np.uint8)
    boxes = []
    for i in np.flatnonzero(labels):
        s = size // 4
        x, y = rng.integers(2, size - s - 2, size=2)
        images[i, y : y + s, x : x + s] = 220
        boxes.append((i, [int(x), int(y), s, s]))
    box_lists = [[] for _ in range(n)]
    for i, b in boxes:
        box_lists[i] = [b]
    return images, labels, box_lists


def build_tiny_cache(out: Path, n: int = 60, size: int = 32, seed: int = 0) -> Path:
    from medclf.data.cache import write_cache

    images, labels, boxes = make_tiny_images(n, size, seed)
    splits = np.where(np.arange(n) % 5 < 3, "train", np.where(np.arange(n) % 5 == 3, "val", "test"))
    manifest = pd.DataFrame(
        {
            "index": np.arange(n),
            "id": [f"img{i:03d}" for i in range(n)],
            "patient_id": [f"p{i:03d}" for i in range(n)],
            "label": labels,
            "label_name": np.where(labels == 1, "pneumonia", "normal"),
            "split": splits,
            "boxes": [json.dumps(b) for b in boxes],
            "view": np.where(np.arange(n) % 2 == 0, "PA", "AP"),
            "sex": "",
            "age": "",
            "source": "synthetic",
        }
    )
    meta = {"source": "synthetic", "size": size, "label_names": ["normal", "pneumonia"], "positive_index": 1,
            "label_mode": "binary", "params": {"seed": seed}}
    write_cache(out, images, manifest, meta)
    return out


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """60 images of 32 px (36 train / 12 val / 12 test, 1/3 positive), shared read-only by tests."""
    return build_tiny_cache(tmp_path_factory.mktemp("tiny") / "cache")


@pytest.fixture(scope="session")
def make_tiny_cache():
    """`make_tiny_cache(out, n=60, size=32, seed=0)`: another tiny cache (e.g. an external test set)."""
    return build_tiny_cache


MULTICLASS_NAMES = ["Normal", "No Lung Opacity / Not Normal", "Lung Opacity"]


def build_tiny_multiclass_cache(out: Path, n: int = 90, size: int = 32, seed: int = 0) -> Path:
    """3 classes in turn (as tests/evaluation/test_eval_multiclass.py makes them): class 1 has a bright square top
    left, class 2 bottom right; 54 train / 18 val / 18 test; view PA/AP alternating, sex and age empty."""
    from medclf.data.cache import write_cache

    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    images = rng.integers(40, 90, size=(n, size, size)).astype(np.uint8)
    images[labels == 1, 4:12, 4:12] = 220
    images[labels == 2, 20:28, 20:28] = 220
    splits = np.where(np.arange(n) % 5 < 3, "train", np.where(np.arange(n) % 5 == 3, "val", "test"))
    manifest = pd.DataFrame({"index": np.arange(n), "id": [f"im{i:03d}" for i in range(n)],
                             "patient_id": [f"p{i:03d}" for i in range(n)], "label": labels,
                             "label_name": np.array(MULTICLASS_NAMES)[labels], "boxes": "[]",
                             "view": np.where(np.arange(n) % 2 == 0, "PA", "AP"), "sex": "", "age": "",
                             "source": "synthetic", "split": splits})
    write_cache(out, images, manifest, {"source": "synthetic", "size": size, "label_names": MULTICLASS_NAMES,
                                        "positive_index": 2, "label_mode": "detailed"})
    return out


@pytest.fixture(scope="session")
def tiny_multiclass_cache(tmp_path_factory) -> Path:
    return build_tiny_multiclass_cache(tmp_path_factory.mktemp("tiny3") / "cache")


@pytest.fixture(scope="session")
def tiny_multiclass_run(tiny_multiclass_cache, tmp_path_factory) -> Path:
    """A 3-class resnet18 trained for 3 short epochs on `tiny_multiclass_cache` (64 px input: layer4 is 2 x 2, so
    CAMs are not flat), not evaluated; read-only: a test that writes into a run copies it first."""
    from medclf.config import load_config
    from medclf.engine.train import train

    cfg = load_config(None, ["model.name=resnet18", "model.input_size=64", "train.epochs=3", "data.batch_size=8",
                             "train.device=cpu", "train.lr=0.003", "train.warmup_epochs=0",
                             "eval.ood_detector=false", "eval.n_boot=0"])
    return train(cfg, tiny_multiclass_cache, tmp_path_factory.mktemp("tiny3run") / "run", progress=False)


@pytest.fixture(scope="session")
def train_tiny():
    """`train_tiny(cache, out)`: a resnet18 run of 2 steps at 32 px on CPU, no OOD detector (for tests that need a
    run's files, not a good model)."""
    def make(cache: Path, out: Path) -> Path:
        from medclf.config import load_config
        from medclf.engine.train import train

        cfg = load_config(None, ["model.name=resnet18", "model.input_size=32", "data.batch_size=8", "train.epochs=1",
                                 "train.max_steps_per_epoch=2", "eval.ood_detector=false", "train.device=cpu"])
        return train(cfg, cache, out, progress=False)

    return make


@pytest.fixture(scope="session")
def tensorboard_scalars():
    """A reader: TensorBoard log folder -> {tag: [(step, value), ...]} over every run in it (TensorBoard's
    own reader)."""
    def read(log_dir) -> dict[str, list[tuple[int, float]]]:
        from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

        mux = EventMultiplexer().AddRunsFromDirectory(str(log_dir))
        mux.Reload()
        out: dict[str, list[tuple[int, float]]] = {}
        for run in mux.Runs():
            for tag in mux.GetAccumulator(run).Tags()["scalars"]:
                out.setdefault(tag, []).extend((e.step, e.value) for e in mux.Scalars(run, tag))
        return out

    return read
