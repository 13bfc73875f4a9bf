"""Real data (skips without ../shared/data): `evaluate --by view,sex` on the RSNA sample counts each group as the
DICOM headers do (SeriesDescription 'view: PA/AP', PatientSex), positives as the labels file does."""

from __future__ import annotations

import json
from collections import Counter

import pandas as pd
import pydicom
import pytest
from typer.testing import CliRunner

from medclf.cli.main import app
from medclf.config import load_config
from medclf.data.cache import Cache
from medclf.data.prepare import prepare_rsna
from medclf.engine.train import train

pytestmark = pytest.mark.slow  # trains a model or starts a subprocess (make test-fast skips it)


@pytest.fixture(scope="module")
def rsna_run(shared, scratch, request):
    sample = shared("rsna-sample")
    root = scratch(request, "subgroups_rsna")
    cache = prepare_rsna(sample / "stage_2_train_images", sample / "stage_2_train_labels.csv", root / "cache",
                         size=32, workers=1, progress=False)
    cfg = load_config("cpu_small", ["model.input_size=32", "train.epochs=1", "train.max_steps_per_epoch=1",
                                    "eval.ood_detector=false", "train.device=cpu"])
    train(cfg, cache, root / "run", progress=False)
    return sample, Cache.open(cache), root / "run"


def header_counts(sample, ids, positive):
    """{column: {group: (n, n_pos)}} from the DICOM headers of `ids`."""
    counts = {"view": Counter(), "sex": Counter()}
    for image_id in ids:
        header = pydicom.dcmread(sample / "stage_2_train_images" / f"{image_id}.dcm", stop_before_pixels=True)
        groups = {"view": header.SeriesDescription.removeprefix("view:").strip(), "sex": header.PatientSex}
        for column, group in groups.items():
            counts[column][group] += 1
            counts[column][group, "pos"] += int(image_id in positive)
    return {c: {g: (n, found[g, "pos"]) for g, n in found.items() if not isinstance(g, tuple)}
            for c, found in counts.items()}


@pytest.mark.parametrize("split", ["test", "train"])
def test_group_sizes_match_the_dicom_headers(rsna_run, split):
    sample, cache, run = rsna_run
    result = CliRunner().invoke(app, ["evaluate", str(run), "--split", split, "--by", "view,sex", "--n-boot", "20"])
    assert result.exit_code == 0, result.output
    labels = pd.read_csv(sample / "stage_2_train_labels.csv")
    positive = set(labels.loc[labels["Target"] == 1, "patientId"])
    ids = cache.manifest.loc[cache.manifest["split"] == split, "id"]
    expected = header_counts(sample, ids, positive)
    columns = json.loads((run / f"subgroups_{split}.json").read_text())["columns"]
    found = {c: {r["group"]: (r["n"], r["n_pos"]) for r in rows} for c, rows in columns.items()}
    assert found == expected
    assert sum(n for n, _ in found["view"].values()) == len(ids)


def test_the_report_shows_the_forest_plot_of_the_rsna_groups(rsna_run):
    import base64

    from medclf.report.html import build_report

    _, _, run = rsna_run
    if not (run / "subgroups_test.json").is_file():
        args = ["evaluate", str(run), "--split", "test", "--by", "view,sex", "--n-boot", "20"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
    page = build_report(run).read_text(encoding="utf-8")
    section = page[page.index('<section id="subgroups">'):]
    section = section[:section.index("</section>")]
    assert "<h4>view</h4>" in section and "<h4>sex</h4>" in section and "too small" in section
    assert base64.b64encode((run / "subgroups_test.png").read_bytes()).decode("ascii") in section
