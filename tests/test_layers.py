"""The package's dependencies point one way (DESIGN.md, layers): no import cycle between the top-level parts
of src/medclf, counting imports inside functions; ensembles are told apart only by the run layer and models."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "medclf"


def top_level_graph() -> dict[str, set[str]]:
    """part -> parts it imports (a part is a subpackage or a module directly under src/medclf)."""
    parts = {p.name.removesuffix(".py") for p in SRC.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    parts.discard("__init__")
    graph: dict[str, set[str]] = {p: set() for p in parts}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).parts
        if rel == ("__init__.py",):
            continue  # the public API re-exports everything, lazily
        source = rel[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
            for name in names:
                bits = name.split(".")
                if bits[0] == "medclf" and len(bits) > 1 and bits[1] in parts and bits[1] != source:
                    graph[source].add(bits[1])
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_walker_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_top_level_parts():
    graph = top_level_graph()
    assert {"runs", "engine", "models", "data", "ensemble", "robust"} <= set(graph)
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"
    # the run layer sits below the workflows and the service
    assert not graph["runs"] & {"engine", "ensemble", "robust", "explain", "export", "serve", "cli", "report"}


def test_ensembles_are_told_apart_only_below_the_workflows():
    offenders = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
                 if "isinstance(" in (text := p.read_text(encoding="utf-8")) and ", Ensemble)" in text
                 and p.relative_to(SRC).parts[0] not in ("runs", "models")]
    assert offenders == []


# ----------------------------------------------------------------------------------------------- one path to
# probabilities: activations and the model's input preprocessing each live in one place (DESIGN.md, layers)

# where logits may become probabilities: the Task, the model outputs, the run layer and the losses
ACTIVATION_HOMES = ("tasks.py", "tasks/", "models/outputs.py", "runs/", "losses.py")
# where a model's input is resized and normalised: the transforms' definitions, the inference graph, the
# training loop's augmented batches, and the Ensemble re-expressing the graph's input for a member
PREPROCESSING_HOMES = ("data/transforms.py", "runs/graph.py", "engine/", "models/ensemble.py")
ACTIVATION_NAMES = {"softmax", "sigmoid", "log_softmax", "logsigmoid", "expit", "log_expit"}
PREPROCESSING_NAMES = {"make_transform", "BatchTransform", "to_unit_float"}
TRANSFORMS_MODULE = "medclf.data.transforms"


def _name_of(node: ast.AST) -> str | None:
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return None


def activation_sites(source: str) -> list[int]:
    """Lines that name a softmax or sigmoid: torch/F/np/scipy functions, tensor methods, nn.Softmax-like
    modules and library targets such as grad-cam's ClassifierOutputSoftmaxTarget (called or only referenced)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        names = [a.asname or a.name for a in node.names] if isinstance(node, ast.ImportFrom) else [_name_of(node)]
        for name in filter(None, names):
            if name.lower() in ACTIVATION_NAMES or "Softmax" in name or "Sigmoid" in name:
                lines.append(node.lineno)
    return sorted(set(lines))


def preprocessing_sites(source: str) -> list[int]:
    """Lines that resize or normalise a model's input outside the graph: any import of medclf.data.transforms
    and any use of its transform builders or a `something.normalise(...)` call (a function handed in as a
    parameter named `normalise`, as attacks take the graph's, is not a copy)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == TRANSFORMS_MODULE:
            lines.append(node.lineno)
        elif isinstance(node, ast.Import) and any(a.name == TRANSFORMS_MODULE for a in node.names):
            lines.append(node.lineno)
        elif _name_of(node) in PREPROCESSING_NAMES and not isinstance(node, ast.ImportFrom):
            lines.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "normalise":
            lines.append(node.lineno)
    return sorted(set(lines))


def offenders(find, homes: tuple[str, ...]) -> dict[str, list[int]]:
    """module (relative to src/medclf) -> offending lines, for every module outside `homes`."""
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if not rel.startswith(homes) and (lines := find(path.read_text(encoding="utf-8"))):
            out[rel] = lines
    return out


def test_the_finders_see_planted_activations_and_preprocessing():
    planted = ("import numpy as np\nimport torch\nfrom scipy.special import expit\nfrom torch import nn\n"
               "def f(x):\n    return torch.softmax(x, 1)\n"       # line 6
               "def g(x):\n    return x.sigmoid()\n"              # 8
               "head = nn.Softmax(dim=1)\n"                          # 9
               "act = torch.nn.functional.log_softmax\n")           # 10
    assert activation_sites(planted) == [3, 6, 8, 9, 10]
    assert activation_sites("def f(p):\n    return -p.max(axis=1)\n# softmax in a comment\n") == []
    grad_cam = "from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget\n"
    assert activation_sites(grad_cam) == [1]
    copy = ("from medclf.data.transforms import make_transform\n"
            "x = make_transform(contract, train=False)(images)\n"
            "y = transform.normalise(unit)\n")
    assert preprocessing_sites(copy) == [1, 2, 3]
    assert preprocessing_sites("from medclf.runs import model_input\nx = model_input(c, images)\n") == []


def test_a_softmax_added_outside_the_allowed_places_is_caught(tmp_path):
    assert not "evaluation/ood.py".startswith(ACTIVATION_HOMES)
    assert "runs/predictor.py".startswith(ACTIVATION_HOMES) and "tasks/binary.py".startswith(ACTIVATION_HOMES)
    assert activation_sites("import torch\nprobs = torch.softmax(logits, dim=1)\n") == [2]


def test_softmax_and_sigmoid_are_applied_only_by_the_task_outputs_run_layer_and_losses():
    assert offenders(activation_sites, ACTIVATION_HOMES) == {}
    # the check reads real code: with no home allowed, the homes' own activations are offenders
    assert set(offenders(activation_sites, ("no-home/",))) >= {"tasks/single.py", "tasks/multilabel.py", "losses.py"}


def test_model_inputs_are_resized_and_normalised_only_in_the_inference_graph():
    assert offenders(preprocessing_sites, PREPROCESSING_HOMES) == {}
    assert preprocessing_sites((SRC / "runs" / "graph.py").read_text(encoding="utf-8"))
