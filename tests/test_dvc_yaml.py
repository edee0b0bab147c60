"""dvc.yaml lists, for every stage, the code it runs: each local module its command imports.

A stage whose deps miss a module it imports is not re-run when that module changes, and a dep
that names a missing file fails `dvc repro` on a fresh clone; both are caught here.
"""

from __future__ import annotations

import ast

import yaml

from tests.conftest import ROOT

PACKAGES = ("tasks", "model", "flows")
# Plumbing every stage shares (params, io, logging, MLflow): a change to these re-runs nothing
# by design, since they do not shape any stage's results.
SHARED = {
    "tasks/__init__.py",
    "model/__init__.py",
    "tasks/common.py",
    "tasks/io.py",
    "tasks/params.py",
    "tasks/tracking.py",
    "tasks/hardware.py",
}


def local_imports(path: str) -> set[str]:
    """Files of PACKAGES that the module at `path` imports (top level and inside functions)."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            file = name.replace(".", "/") + ".py"
            if name.split(".")[0] in PACKAGES and (ROOT / file).exists():
                found.add(file)
    return found


def closure(path: str) -> set[str]:
    """The module and what it imports, transitively; SHARED modules are not followed."""
    seen, todo = set(), [path]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        if current not in SHARED:
            todo.extend(local_imports(current))
    return seen


def stages() -> dict[str, dict]:
    raw = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: s.get("do", s) for name, s in raw.items()}


def test_every_dep_exists():
    for name, stage in stages().items():
        for dep in stage.get("deps", []):
            if dep.split("/")[0] in PACKAGES + ("bench",):
                assert (ROOT / dep).exists(), f"stage {name}: dep {dep} does not exist"


def test_deps_list_every_module_the_stage_imports():
    for name, stage in stages().items():
        module = stage["cmd"].split()[2]  # python -m tasks.<stage> [args]
        needed = closure(module.replace(".", "/") + ".py") - SHARED
        missing = sorted(needed - set(stage.get("deps", [])))
        assert not missing, f"stage {name} imports {missing} but dvc.yaml does not list them"
