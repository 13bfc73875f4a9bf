"""A test split evaluated without --by: the report's Subgroups section says how to get results per subgroup,
naming the columns the run's cache fills (view only in the tiny cache), else view, sex, age."""

from __future__ import annotations

import json
import shutil

import pytest

from medclf.engine.evaluate import evaluate_run
from medclf.report.html import build_report
from medclf.runs import RunDir

pytestmark = pytest.mark.slow  # trains a model or starts a subprocess (make test-fast skips it)


@pytest.fixture(scope="module")
def run(tiny_cache, scratch, request, train_tiny):
    out = scratch(request, "hint") / "run"
    train_tiny(tiny_cache, out)
    evaluate_run(out, split="test", n_boot=20, device="cpu", progress=False)
    return out


def test_the_hint_names_the_columns_the_cache_fills(run):
    page = build_report(run).read_text(encoding="utf-8")
    assert (f"Split test: run <code>medclf evaluate {run} --by view</code> for results per subgroup." in page)
    assert "--by view,sex,age" not in page  # sex and age are empty in the tiny cache


def test_without_a_readable_cache_the_hint_names_view_sex_age(run, tmp_path):
    moved = tmp_path / "run"
    shutil.copytree(run, moved)
    summary_path = RunDir(moved).data_summary_path
    summary = json.loads(summary_path.read_text())
    summary["cache"] = str(tmp_path / "gone")
    summary_path.write_text(json.dumps(summary))
    page = build_report(moved).read_text(encoding="utf-8")
    assert f"run <code>medclf evaluate {moved} --by view,sex,age</code> for results per subgroup." in page


def test_no_hint_once_subgroups_are_written(run, tmp_path):
    done = tmp_path / "run"
    shutil.copytree(run, done)
    evaluate_run(done, split="test", n_boot=20, device="cpu", progress=False, by=["view"])
    page = build_report(done).read_text(encoding="utf-8")
    assert "for results per subgroup" not in page and "<h3>Split: test</h3>" in page
