"""The layout is the architecture: dependencies point one way and no module imports in a circle.

Every module's imports (top-level and inside functions: a lazy import is still a dependency) are
read with ``ast``. Two rules:

* **Layers.** ``launch`` -> ``pretrain`` -> ``data_prep``; inside ``pretrain`` the commands sit on
  top, then ``comparison``, ``parallel``, ``training``, ``inference``, then ``checkpoints`` /
  ``data`` / ``model``, then ``runtime`` / ``config``. A module may import its own part or a
  part below it, never above (``LAYERS``; ``model`` may only use ``config``).
* **No cycles** between modules (a depth-first search over the import graph).

The checker is tested on a deliberate cycle and a deliberate upward import in a temporary tree.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Optional, Set

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("data_prep", "pretrain", "launch")

# Part -> the parts it may import (besides itself). Parts are top packages or pretrain subpackages;
# a module directly in pretrain/ (a command) is the part "pretrain.<commands>".
COMMANDS = "pretrain.<commands>"
LAYERS: Dict[str, Set[str]] = {
    "data_prep": set(),
    "pretrain.config": {"data_prep"},
    "pretrain.runtime": set(),
    "pretrain.model": {"pretrain.config"},
    "pretrain.data": {"pretrain.config", "pretrain.runtime", "data_prep"},
    "pretrain.checkpoints": {"pretrain.config", "pretrain.runtime", "data_prep"},
    "pretrain.inference": {"pretrain.config", "pretrain.runtime", "pretrain.model", "pretrain.data",
                           "pretrain.checkpoints", "data_prep"},
}
LAYERS["pretrain.training"] = LAYERS["pretrain.inference"] | {"pretrain.inference"}
LAYERS["pretrain.parallel"] = LAYERS["pretrain.training"] | {"pretrain.training"}
LAYERS["pretrain.comparison"] = LAYERS["pretrain.parallel"] | {"pretrain.parallel"}
LAYERS[COMMANDS] = LAYERS["pretrain.comparison"] | {"pretrain.comparison"}
LAYERS["launch"] = LAYERS[COMMANDS] | {COMMANDS}


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def part_of(module: str) -> str:
    """The layer a module belongs to."""
    bits = module.split(".")
    if bits[0] != "pretrain":
        return bits[0]
    if len(bits) == 1:
        return COMMANDS  # pretrain/__init__.py
    sub = f"pretrain.{bits[1]}"
    return sub if sub in LAYERS else COMMANDS


def imports_of(path: Path, module: str, known: Set[str]) -> Set[str]:
    """Project modules that ``path`` imports (resolved to the longest known module name)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    found: Set[str] = set()
    for node in ast.walk(tree):
        names: List[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_pkg else module.split(".")[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph(root: Path) -> Dict[str, Set[str]]:
    files = {module_name(root, p): p for pkg in PACKAGES if (root / pkg).is_dir()
             for p in sorted((root / pkg).rglob("*.py"))}
    known = set(files)
    return {m: imports_of(p, m, known) for m, p in files.items()}


def layer_violations(graph: Dict[str, Set[str]]) -> List[str]:
    bad = []
    for module, deps in sorted(graph.items()):
        here = part_of(module)
        for dep in sorted(deps):
            there = part_of(dep)
            if there != here and there not in LAYERS[here]:
                bad.append(f"{module} ({here}) imports {dep} ({there})")
    return bad


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One import cycle as a list of modules (first == last), or None."""
    state: Dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_every_module_belongs_to_a_layer():
    graph = import_graph(ROOT)
    assert len(graph) > 40
    assert all(part_of(m) in LAYERS for m in graph), [m for m in graph if part_of(m) not in LAYERS]


def test_dependencies_point_one_way():
    assert layer_violations(import_graph(ROOT)) == []


def test_no_import_cycles():
    assert find_cycle(import_graph(ROOT)) is None


def _uses_torch_distributed(path: Path) -> bool:
    """An import of torch.distributed or an attribute access ``torch.distributed.*`` (code only;
    docstrings that mention it do not count)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import) and any(a.name.startswith("torch.distributed") for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch.distributed"):
            return True
        if isinstance(node, ast.ImportFrom) and node.module == "torch" and any(
                a.name == "distributed" for a in node.names):
            return True
        if isinstance(node, ast.Attribute) and node.attr == "distributed" and isinstance(
                node.value, ast.Name) and node.value.id == "torch":
            return True
    return False


def test_model_code_has_no_distributed_training_or_data_imports(tmp_path):
    graph = import_graph(ROOT)
    model_files = sorted((ROOT / "pretrain" / "model").glob("*.py"))
    assert model_files
    for path in model_files:
        module = module_name(ROOT, path)
        assert {part_of(d) for d in graph[module]} <= {"pretrain.model", "pretrain.config"}, module
        assert not _uses_torch_distributed(path), path
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\n\ndef f(x):\n    return torch.distributed.all_reduce(x)\n")
    assert _uses_torch_distributed(bad)


def _tree(tmp_path: Path, files: Dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_the_checker_sees_a_deliberate_cycle_and_an_upward_import(tmp_path):
    root = _tree(tmp_path, {
        "data_prep/__init__.py": "",
        "data_prep/a.py": "from data_prep import b\n",
        "data_prep/b.py": "def f():\n    from data_prep.a import g  # a lazy import counts too\n",
        "pretrain/__init__.py": "",
        "pretrain/model/__init__.py": "",
        "pretrain/model/m.py": "from pretrain.training.loop import run\n",
        "pretrain/training/__init__.py": "",
        "pretrain/training/loop.py": "from ..model import m\n",
    })
    graph = import_graph(root)
    assert graph["data_prep.b"] == {"data_prep.a"}
    assert graph["pretrain.training.loop"] == {"pretrain.model", "pretrain.model.m"}  # relative
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1]
    assert set(cycle) in ({"data_prep.a", "data_prep.b"}, {"pretrain.model.m", "pretrain.training.loop"})
    assert layer_violations(graph) == [
        "pretrain.model.m (pretrain.model) imports pretrain.training.loop (pretrain.training)"]
    # Breaking the cycles makes the checker quiet again.
    (root / "data_prep/b.py").write_text("")
    (root / "pretrain/model/m.py").write_text("")
    assert find_cycle(import_graph(root)) is None and layer_violations(import_graph(root)) == []


def test_data_prep_imports_nothing_from_pretrain_or_launch():
    graph = import_graph(ROOT)
    for module, deps in graph.items():
        if module.startswith("data_prep"):
            assert not [d for d in deps if not d.startswith("data_prep")], module
