"""`medclf evaluate RUN --by COLUMNS` end to end on the tiny cache (view PA/AP, sex and age empty): the subgroup
files, numbers equal to binary_metrics on the group's rows, metrics files unchanged, one-line errors, and the
report's Subgroups section with its forest plot."""

from __future__ import annotations

import base64
import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from medclf.cli.main import app
from medclf.config import load_config
from medclf.data.cache import Cache
from medclf.engine.train import train
from medclf.errors import DataError
from medclf.evaluation.metrics import binary_metrics
from medclf.report.html import build_report

pytestmark = pytest.mark.slow  # trains a model or starts a subprocess (make test-fast skips it)


@pytest.fixture(scope="module")
def run(tiny_cache, scratch, request):
    out = scratch(request, "subgroups") / "run"
    cfg = load_config(None, ["model.name=resnet18", "model.input_size=32", "data.batch_size=8", "train.epochs=1",
                             "train.max_steps_per_epoch=2", "eval.ood_detector=false", "train.device=cpu"])
    train(cfg, tiny_cache, out, progress=False)
    return out


def evaluate(*args: str):
    result = CliRunner().invoke(app, ["evaluate", *args, "--n-boot", "50"])
    return result


def test_by_view_sex_age_on_the_test_split_reports_too_small_groups_and_keeps_metrics(run):
    plain = evaluate(str(run), "--split", "test")
    assert plain.exit_code == 0, plain.output
    before = (run / "metrics_test.json").read_text()
    result = evaluate(str(run), "--split", "test", "--by", "view,sex,age")
    assert result.exit_code == 0, result.output
    assert (run / "metrics_test.json").read_text() == before  # the binary metrics file is untouched
    sub = json.loads((run / "subgroups_test.json").read_text())
    counts = {c: [(r["group"], r["n"], r["n_pos"], r["too_small"]) for r in rows] for c, rows in sub["columns"].items()}
    # 12 test images (4 positive); every other image is PA; sex and age are empty in the tiny cache
    assert counts == {"view": [("AP", 6, 2, True), ("PA", 6, 2, True)], "sex": [("unknown", 12, 4, True)],
                      "age": [("unknown", 12, 4, True)]}
    assert all(r["metrics"] is None for rows in sub["columns"].values() for r in rows)
    assert sub["min_class"] == 10 and sub["overall"]["n"] == 12
    assert "view=AP           n=6     positives=2     too small" in result.output
    table = pd.read_csv(run / "subgroups_test.csv")
    assert list(table["column"]) == ["view", "view", "sex", "age"] and table["roc_auc"].isna().all()
    assert (run / "subgroups_test.png").read_bytes().startswith(b"\x89PNG")


def test_group_numbers_equal_binary_metrics_on_the_groups_rows(run, tiny_cache):
    result = evaluate(str(run), "--split", "train", "--by", "view", "--min-group", "3")
    assert result.exit_code == 0, result.output
    rows = json.loads((run / "subgroups_train.json").read_text())["columns"]["view"]
    pred = pd.read_csv(run / "predictions_train.csv")
    view = Cache.open(tiny_cache).manifest.set_index("id").loc[pred["id"], "view"].to_numpy()
    threshold = json.loads((run / "metrics_train.json").read_text())["threshold"]
    for row in rows:
        mine = pred[view == row["group"]]
        expected = binary_metrics(mine["label"], mine["prob"], threshold, n_boot=50)
        # the CSV holds the probabilities rounded to float32 digits: calibration error moves in the 8th place
        assert row["metrics"].pop("ece") == pytest.approx(expected.pop("ece"), abs=1e-6)
        assert row["metrics"] == expected
        assert row["vs_rest"]["n_valid"] > 0 and 0 < row["vs_rest"]["p_value"] <= 1
    assert [r["n"] for r in rows] == [18, 18]


def test_an_extra_manifest_column_groups_an_external_cache(run, tiny_cache, tmp_path):
    """A cache whose manifest carries `site` (as a folder CSV's extra column does); blank sites are 'unknown'."""
    from medclf.data.cache import write_cache

    source = Cache.open(tiny_cache)
    manifest = source.manifest.copy()
    manifest["site"] = ["north", "south", ""] * (len(manifest) // 3)
    out = write_cache(tmp_path / "ext", np.asarray(source.images), manifest, dict(source.meta))
    result = evaluate(str(run), "--data", str(out), "--split", "test", "--by", "site", "--min-group", "1")
    assert result.exit_code == 0, result.output
    [path] = run.glob("subgroups_test@*.json")
    rows = json.loads(path.read_text())["columns"]["site"]
    test_rows = manifest[manifest["split"] == "test"]
    expected = test_rows["site"].replace("", "unknown").value_counts().to_dict()
    assert {r["group"]: r["n"] for r in rows} == expected == {"north": 4, "south": 4, "unknown": 4}
    assert [r["group"] for r in rows] == ["north", "south", "unknown"]


def test_unknown_column_is_one_line_naming_the_valid_ones(run):
    result = evaluate(str(run), "--by", "view,scanner")
    assert isinstance(result.exception, DataError)
    message = str(result.exception)
    assert "\n" not in message and "'scanner'" in message and message.endswith("valid: view, sex, age")


def test_report_shows_the_subgroups_section_and_forest_plot(run):
    if not (run / "subgroups_test.json").is_file():
        assert evaluate(str(run), "--split", "test", "--by", "view").exit_code == 0
    page = build_report(run).read_text(encoding="utf-8")
    section = page[page.index('<section id="subgroups">'):]
    section = section[:section.index("</section>")]
    assert "<h4>view</h4>" in section and "too small (n=6; &lt; 10 positives or negatives)" in section
    png = (run / "subgroups_test.png").read_bytes()
    assert base64.b64encode(png).decode("ascii") in section


def test_a_mistyped_column_gets_a_did_you_mean(tiny_cache):
    from medclf.data.cache import Cache
    from medclf.engine.evaluate import check_subgroup_columns

    with pytest.raises(DataError) as err:
        check_subgroup_columns(Cache.open(tiny_cache), ["vew"])
    assert str(err.value) == (f"--by: no column 'vew' in {tiny_cache}'s manifest (did you mean view?); "
                              "valid: view, sex, age")
