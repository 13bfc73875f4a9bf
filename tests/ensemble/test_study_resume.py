"""`medclf study`: variants trained, evaluated and compared; a rerun keeps finished variants untouched."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from medclf.errors import ConfigError, MedclfError
from medclf.study import load_study, run_study

pytestmark = pytest.mark.slow  # trains a model or starts a subprocess (make test-fast skips it)

REPO = Path(__file__).resolve().parents[2]
TINY_BASE = {"model.name": "resnet18", "model.input_size": 32, "data.batch_size": 8, "train.epochs": 1,
             "train.lr": 0.003, "train.warmup_epochs": 0, "train.weight_decay": 0.0, "train.device": "cpu"}


def write_study(path: Path, cache: Path, variants: dict, **extra) -> Path:
    doc = {"data": str(cache), "out": str(path.parent / "study"), "split": "test", "n_boot": 50,
           "base": {"overrides": TINY_BASE}, "variants": variants, **extra}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _stamp(path: Path):
    return path.stat().st_mtime_ns, path.read_bytes()


def test_interrupted_study_resumes_without_retraining_finished_variants(tiny_cache, tmp_path):
    study = write_study(tmp_path / "study.yaml", tiny_cache, {
        "single": {},
        "ens2": {"ensemble": {"members": 2, "mode": "partition"}},
    })
    first = run_study(study, progress=False)
    out = tmp_path / "study"
    assert {k: v["status"] for k, v in first["variants"].items()} == {"single": "trained", "ens2": "trained"}
    table = pd.read_csv(out / "comparison.csv")
    assert table["run"].tolist() == ["single", "ens2"] and table["n"].tolist() == [12, 12]
    assert "std" in pd.read_csv(out / "ens2" / "predictions_test.csv").columns

    # interrupted after the first variant: the second never got as far as its evaluation
    kept = _stamp(out / "single" / "best.pt")
    (out / "ens2" / "metrics_test.json").unlink()
    shutil.rmtree(out / "ens2" / "members" / "1")
    (out / "comparison.md").unlink()
    member0 = _stamp(out / "ens2" / "members" / "0" / "best.pt")
    second = run_study(study, progress=False)
    assert {k: v["status"] for k, v in second["variants"].items()} == {"single": "kept", "ens2": "trained"}
    assert _stamp(out / "single" / "best.pt") == kept
    assert _stamp(out / "ens2" / "members" / "0" / "best.pt") == member0  # only the missing member trained
    assert (out / "ens2" / "members" / "1" / "best.pt").is_file() and (out / "comparison.md").is_file()
    assert json.loads((out / "study.json").read_text())["variants"]["single"]["status"] == "kept"

    # a finished variant whose settings changed in the file is not silently kept
    write_study(study, tiny_cache, {"single": {"overrides": {"loss.name": "focal"}}})
    with pytest.raises(MedclfError, match="variant 'single' .* was trained with another config \\(loss.name differ"):
        run_study(study, progress=False)


def test_grid_and_named_variants(tmp_path, tiny_cache):
    grid = {"sampler": {"plain": {"data.sampler": "shuffle"}, "balanced": {"data": {"sampler": "balanced"}}},
            "loss": {"ce": ["loss.name=ce"], "focal": {"loss.name": "focal"}}}
    path = write_study(tmp_path / "s.yaml", tiny_cache, {"ens": {"ensemble": {"models": "resnet18,resnet34",
                                                                               "mode": "models"}}}, grid=grid)
    study = load_study(path, out=tmp_path / "elsewhere")
    assert [v.name for v in study.variants] == ["plain_ce", "plain_focal", "balanced_ce", "balanced_focal", "ens"]
    cfg = study.config(study.variants[3])
    assert (cfg.data.sampler, cfg.loss.name, cfg.model.input_size) == ("balanced", "focal", 32)
    assert study.variants[4].ensemble == {"models": ["resnet18", "resnet34"], "mode": "models"}
    assert study.out == tmp_path / "elsewhere"


@pytest.mark.parametrize("change, message", [
    ({"variants": {"a": {"overrides": {"train.epoch": 2}}}}, "variant 'a': override: unknown key 'train.epoch'"),
    ({"variants": {"a b": {}}}, "variant name 'a b' must be"),
    ({"variants": {"a": {"ensemble": {"size": 3}}}}, "variant 'a': ensemble takes members, mode"),
    ({"varients": {}}, "unknown key\\(s\\) varients"),
    ({"split": "holdout"}, "split must be train, val or test"),
])
def test_bad_study_files_fail_before_training(tmp_path, tiny_cache, change, message):
    path = write_study(tmp_path / "bad.yaml", tiny_cache, {"a": {}})
    doc = yaml.safe_load(path.read_text())
    doc.update(change)
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=message):
        load_study(path)


def test_shipped_study_files_load(tmp_path):
    seed = load_study(REPO / "configs" / "study_seed.yaml", data=tmp_path)
    names = [v.name for v in seed.variants]
    assert names[0] == "plain_ce" and "ensemble3" in names and len(names) == 7
    assert seed.config(seed.variants[0]).model.name == "resnet50" and seed.config(seed.variants[0]).model.pretrained
    assert seed.variants[-1].ensemble == {"members": 3, "mode": "partition", "combine": "mean"}
    cpu = load_study(REPO / "configs" / "study_cpu.yaml", data=tmp_path)
    assert 3 <= len(cpu.variants) <= 4
    assert {cpu.config(v).model.input_size for v in cpu.variants} == {64}
