"""Every file name of a run is written in medclf/runs/layout.py (RunDir), every file name of a cache in
medclf/data/cache.py (DESIGN.md, layers): no other module spells one as a string literal."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from medclf.data import cache
from medclf.runs import RunDir

SRC = Path(__file__).resolve().parents[1] / "src" / "medclf"
# Modules another helper is rewriting; the lead removes them from this list once that work is merged. Keep it tiny.
NOT_YET: tuple[str, ...] = ()  # every module now names run files through RunDir


def run_file_names() -> tuple[set[str], set[str]]:
    """(RunDir's file names, the prefixes of its tagged names such as predictions_<split>.csv)."""
    values = {v for k, v in vars(RunDir).items() if k.isupper() and isinstance(v, str)}
    prefixes = {v for v in values if v.endswith("_")}
    return {v for v in values - prefixes if "." in v}, prefixes  # folder names (members, cache) are also words


def literal_offenders(source: str, names: set[str], prefixes: set[str]) -> list[tuple[int, str]]:
    """(line, literal) for each string literal that is a file name, ends a path with one (`run / "x/best.pt"`,
    `f"{run}/best.pt"`) or starts a tagged one (`f"predictions_{split}.csv"`, `"metrics_*.json"`). Docstrings
    and prose that mentions a name in passing are not paths, so they pass."""
    tree = ast.parse(source)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    named = re.compile(r"(?:^|/)(?:{})$".format("|".join(map(re.escape, sorted(names)))))
    tagged = re.compile(r"(?:^|/)(?:{})[\w*@{{}}.-]*$".format("|".join(map(re.escape, sorted(prefixes)))) if prefixes
                        else r"(?!)")  # no prefixes: matches nothing
    return sorted((node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
            and (named.search(node.value) or tagged.search(node.value)))


def offenders_outside(owner: str, names: set[str], prefixes: set[str] = frozenset()) -> list[str]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith(owner) or rel.startswith(NOT_YET):
            continue
        found += [f"{rel}:{line}: {value!r}" for line, value in
                  literal_offenders(path.read_text(encoding="utf-8"), names, prefixes)]
    return found


def test_the_check_catches_paths_and_lets_prose_pass():
    names, prefixes = {"best.pt", "cache.json"}, {"metrics_"}
    source = ('"""Writes best.pt."""\n'
              'a = run / "best.pt"\n'
              'b = f"{run}/best.pt"\n'
              'c = run / f"metrics_{split}.json"\n'
              'd = sorted(run.glob("metrics_*.json"))\n'
              'e = "no best.pt (nothing to resume)"\n'
              'f = "best.ptx"\n'
              'def g():\n    """Reads cache.json."""\n    return "x/cache.json"\n')
    assert literal_offenders(source, names, prefixes) == [
        (2, "best.pt"), (3, "/best.pt"), (4, "metrics_"), (5, "metrics_*.json"), (10, "x/cache.json")]


def test_run_file_names_are_written_only_in_the_run_layer():
    names, prefixes = run_file_names()
    assert {"best.pt", "config.yaml", "ensemble.json", "explanations.csv", "comparison.md", "model.onnx"} <= names
    assert prefixes == {"predictions_", "metrics_", "attack_examples_"}
    assert offenders_outside("runs/", names, prefixes) == []


def test_cache_file_names_are_written_only_in_the_cache_module():
    names = {cache.IMAGES, cache.MANIFEST, cache.META, cache.STAGED_IMAGES}
    assert names == {"images.npy", "manifest.csv", "cache.json", "images.kept.npy"}
    assert offenders_outside("data/cache.py", names) == []
