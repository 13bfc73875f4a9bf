"""The examples run as written: `examples/quickstart.ipynb` (executed in a Jupyter kernel) and the README's
Python example. Each trains a tiny model on toy data on the CPU (about 20 s)."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # both examples train a tiny model (make test-fast skips them)

ROOT = Path(__file__).resolve().parents[1]


def readme_python_block() -> str:
    blocks = re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(encoding="utf-8"), re.M | re.S)
    assert len(blocks) == 1, f"README.md has {len(blocks)} python blocks; this test runs the one"
    return blocks[0]


def test_the_readme_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # its mkdtemp() lands here and is cleaned up
    scope: dict = {"__name__": "__readme__"}
    exec(compile(readme_python_block(), "README.md", "exec"), scope)
    import medclf

    assert isinstance(scope["run"], medclf.Run) and isinstance(scope["predictor"], medclf.Predictor)
    metrics, table, files, prediction = scope["metrics"], scope["table"], scope["files"], scope["prediction"]
    assert (metrics["n"], metrics["n_pos"]) == (32, 16) and 0.0 <= metrics["roc_auc"] <= 1.0
    assert list(table.columns) == ["path", "prob", "predicted", "threshold", "ood", "ood_score", "error"]
    assert table["path"].tolist() == [str(f) for f in files] and (table["error"] == "").all()
    assert table["prob"].between(0, 1).all() and set(table["predicted"]) <= {"normal", "opacity"}
    # a PNG file and the same pixels as an array get one probability
    assert prediction.probs.shape == (4, 2)
    assert abs(table["prob"].to_numpy() - prediction.probs[:, 1]).max() < 1e-5
    assert scope["maps"].shape == (1, 28, 28) and 0.0 <= scope["maps"].min() <= scope["maps"].max() <= 1.0
    assert "predicted" in capsys.readouterr().out


# appended to the executed copy: what the notebook's cells left in the kernel, as JSON on stdout
PROBE = """
import json
print(json.dumps({"medclf": medclf.__file__, "work_left": work.exists(),
                  "metrics": {k: metrics[k] for k in ("roc_auc", "f1", "recall", "specificity", "threshold")},
                  "columns": list(table.columns), "probs": table["prob"].tolist(), "labels": table["label"].tolist(),
                  "maps": list(maps.shape), "map_range": [float(maps.min()), float(maps.max())]}))
"""


def test_the_quickstart_notebook_runs(tmp_path):
    import nbclient  # the `test` extra installs nbclient, nbformat and ipykernel
    import nbformat

    nb = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    # "python3" is this interpreter (jupyter_client runs sys.executable for it); medclf comes from this checkout
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                                     resources={"metadata": {"path": str(tmp_path)}})
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # the kernel's inline backend shows figures
    client.execute(env={**env, "PYTHONPATH": path})
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    probe = json.loads("".join(o["text"] for o in code[-1].outputs if o.get("name") == "stdout"))

    assert probe["medclf"] == str(ROOT / "src" / "medclf" / "__init__.py")
    assert probe["work_left"] is False  # the last cell cleans up
    assert set(probe["metrics"]) == {"roc_auc", "f1", "recall", "specificity", "threshold"}
    assert all(0.0 <= v <= 1.0 for v in probe["metrics"].values())
    assert probe["columns"] == ["label", "prob", "predicted", "threshold", "ood", "ood_score"]
    assert len(probe["probs"]) == 6 and all(0.0 <= p <= 1.0 for p in probe["probs"])
    assert probe["labels"] == [0, 1, 0, 1, 0, 1]
    assert probe["maps"] == [1, 28, 28] and 0.0 <= probe["map_range"][0] <= probe["map_range"][1] <= 1.0
    # what a reader sees: the tables as HTML, the decision column, the explanation line and the figure
    shown = ["".join(str(o.get("data", {}).get("text/html", "")) + o.get("text", "") for o in cell.outputs)
             for cell in code]
    assert "<th>predicted</th>" in shown[3] and "<th>ood_score</th>" in shown[3]
    assert "<th>path</th>" in shown[4] and "image_2.png" in shown[4] and "<th>error</th>" in shown[4]
    assert re.fullmatch(r"p\(opacity\) = [01]\.\d{3}; the map peaks at row \d+, column \d+\n", shown[5])
    assert any("image/png" in o.get("data", {}) for o in code[6].outputs)
