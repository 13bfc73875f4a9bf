"""Workflows do not ask which task they have (DESIGN.md, task types): the `if` / conditional-expression / `while` /
`match` sites of src/medclf whose test names a task ('binary', 'multiclass', 'multilabel', or a name or attribute
called task / multilabel / multiclass / is_multilabel / is_multiclass) stay at most 15, in at most 6 modules, all
in the modules listed below. What a task means lives in medclf.tasks, one class per task type.

The walk is the one /work/shared/tools/task_branches.py does, written out here so the test runs without it."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "medclf"
TASK_WORDS = {"binary", "multiclass", "multilabel"}
TASK_NAMES = {"task", "multilabel", "multiclass", "is_multilabel", "is_multiclass"}
MAX_SITES, MAX_MODULES = 15, 6
# where a task branch may still stand: sources parsing their own label modes and task options (data/), the
# report's metrics-file layouts, the OOD scores on raw logits, and the ensemble's refusal of multilabel votes
ALLOWED = {"data/folder.py", "data/prepare.py", "data/rsna.py", "report/html.py", "evaluation/ood.py",
           "models/ensemble.py"}


def names_task(node: ast.AST) -> bool:
    for n in ast.walk(node):
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in TASK_WORDS:
            return True
        if isinstance(n, ast.Attribute) and n.attr in TASK_NAMES:
            return True
        if isinstance(n, ast.Name) and n.id in TASK_NAMES:
            return True
    return False


def branch_sites(source: str) -> int:
    """The task-branch sites of one module's source."""
    count = 0
    for n in ast.walk(ast.parse(source)):
        test = n.test if isinstance(n, (ast.If, ast.IfExp, ast.While)) else \
            n.subject if isinstance(n, ast.Match) else None
        count += test is not None and names_task(test)
    return count


def tree_sites() -> dict[str, int]:
    """module (relative to src/medclf) -> its task-branch sites, for the modules that have any."""
    sites = {str(p.relative_to(SRC)): branch_sites(p.read_text(encoding="utf-8")) for p in sorted(SRC.rglob("*.py"))}
    return {m: c for m, c in sites.items() if c}


def problems(sites: dict[str, int]) -> list[str]:
    """Why `sites` breaks the rule ([] when it keeps it)."""
    out = []
    if sum(sites.values()) > MAX_SITES:
        out.append(f"{sum(sites.values())} task-branch sites > {MAX_SITES}")
    if len(sites) > MAX_MODULES:
        out.append(f"task branches in {len(sites)} modules > {MAX_MODULES}")
    out += [f"task branch in {m} ({c}): ask its Task (medclf.tasks) instead" for m, c in sites.items()
            if m not in ALLOWED]
    return out


def test_the_walk_counts_each_kind_of_task_branch():
    source = '''
if contract.multilabel:
    pass
y = a if task == "binary" else b
while self.is_multiclass:
    break
match kind.task:
    case _:
        pass
if mode == "models":  # no task named
    pass
probs = ACTIVATIONS[name](logits)  # a lookup is not a branch
calls = [x for x in xs if x > 0]
'''
    assert branch_sites(source) == 4


def test_the_tree_keeps_its_task_branches_in_few_places():
    sites = tree_sites()
    assert problems(sites) == [], sites


def test_a_branch_added_elsewhere_fails():
    planted = branch_sites("def f(c):\n    return 1 if c.multilabel else 0\n")
    assert planted == 1
    found = problems({**tree_sites(), "explain/run.py": planted})
    assert "task branch in explain/run.py (1): ask its Task (medclf.tasks) instead" in found
    assert "task-branch sites > 15" in " ".join(problems({"report/html.py": 16}))
    assert any("modules > 6" in p for p in problems({f"m{i}.py": 1 for i in range(7)}))
