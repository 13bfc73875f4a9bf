"""`medclf compare RUN RUN --data CACHE`: the runs' evaluations of an external test set (issue 15, item 5)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medclf.compare import compare_runs
from medclf.errors import MedclfError

pytestmark = pytest.mark.slow  # trains a model or starts a subprocess (make test-fast skips it)

REPO = Path(__file__).resolve().parents[2]


def medclf(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medclf", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


@pytest.fixture(scope="module")
def external_pair(tiny_cache, tiny_cfg, make_tiny_cache, scratch, request):
    """Two runs trained on the tiny cache and evaluated (`medclf evaluate --data`) on another cache of 20 images."""
    from medclf.engine.evaluate import evaluate_run
    from medclf.engine.train import train

    root = scratch(request, "external")
    external = make_tiny_cache(root / "external", n=20, seed=7)
    first = train(tiny_cfg(), tiny_cache, root / "first", progress=False)
    evaluate_run(first, data=external, split="test", n_boot=50, progress=False)  # what `medclf evaluate` calls
    second = root / "second"
    shutil.copytree(first, second)  # the same model twice: every paired difference is exactly 0
    return Path(first), second, external


def test_compare_data_finds_the_external_evaluation(external_pair):
    first, second, external = external_pair
    content_hash = json.loads((external / "cache.json").read_text())["content_hash"]
    assert (first / f"predictions_test@{content_hash[:8]}.csv").is_file()
    assert not (first / "predictions_test.csv").exists()
    frame = compare_runs([first, second], data=external, n_boot=50)
    assert frame["n"].tolist() == [4, 4]  # the external cache's test split: rows 4, 9, 14, 19 (i % 5 == 4)
    assert frame.loc[1, "d_auc"] == 0.0 and frame.loc[1, "d_f1"] == 0.0
    done = medclf("compare", first, second, "--data", external, "--n-boot", "50")
    assert done.returncode == 0, done.stderr
    assert f"Split `test` of `{external}`" in done.stdout


def test_without_data_the_error_says_to_add_it(external_pair):
    first, second, external = external_pair
    content_hash = json.loads((external / "cache.json").read_text())["content_hash"]
    with pytest.raises(MedclfError) as err:
        compare_runs([first, second])
    assert str(err.value) == (f"{first}: no predictions_test.csv or metrics_test.json ({first} has test "
                              f"evaluations of other caches (test@{content_hash[:8]}): add --data CACHE to "
                              "compare those)")


def test_a_run_not_evaluated_on_that_cache_is_told_the_command(external_pair, tiny_cache, make_tiny_cache,
                                                                tmp_path):
    first, _, external = external_pair
    other = make_tiny_cache(tmp_path / "other", n=10, seed=8)
    with pytest.raises(MedclfError) as err:
        compare_runs([first, first], data=other)
    assert str(err.value).endswith(f"(run `medclf evaluate {first} --data {other} --split test`)")
    # the run's own cache named with --data: its plain test evaluation, which this run does not have yet
    with pytest.raises(MedclfError, match=r"no predictions_test.csv .*medclf evaluate .* --split test`\)$"):
        compare_runs([first, first], data=tiny_cache)
