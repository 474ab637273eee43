"""The folder tree is the module map: imports go one way, and no module imports itself in a circle.

Layers, lowest first (docs/internals.md): utils.common <- utils.data, backbones <- utils.artifacts,
utils.training with the heads in losses/ (siblings: neither imports the other) <- losses/compatibility.py,
BCT_methods, train_old_*.py <- tools.
Every import counts, also one inside a function (a lazy import is still a dependency).
"""
import ast
import importlib.util
from pathlib import Path

import pytest

from utils.common.config import REPO_ROOT

# package prefix -> (layer, group); a module may import a lower layer, or its own group
LAYERS = [
    ("utils.common", 0, "common"),
    ("utils.data", 1, "data"),
    ("backbones", 1, "backbones"),
    ("utils.artifacts", 2, "artifacts"),
    ("utils.training", 2, "training"),
    ("losses.compatibility", 3, "methods"),   # what methods share; reads artifacts
    ("losses", 2, "training"),                # the heads (margin, Partial FC, softmax): parts of the engine
    ("BCT_methods", 3, "methods"),
    ("train_old_arc", 3, "methods"),
    ("train_old_softmax", 3, "methods"),
    ("tools", 4, "tools"),
]
PACKAGES = ("utils", "backbones", "losses", "BCT_methods", "tools", "train_old_arc", "train_old_softmax")


def layer_of(module: str):
    for prefix, layer, group in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return layer, group
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_modules():
    for package in PACKAGES:
        root = REPO_ROOT / package
        paths = [root.with_suffix(".py")] if root.with_suffix(".py").is_file() else sorted(root.rglob("*.py"))
        for path in paths:
            if "configs" in path.parts:
                continue   # config files import nothing of the library
            yield module_name(path), path


def imports_of(path: Path, known: set) -> set:
    """Project modules `path` imports (resolved to the longest known module name)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            for end in range(len(parts), 0, -1):
                candidate = ".".join(parts[:end])
                if candidate in known:
                    found.add(candidate)
                    break
    return found


@pytest.fixture(scope="module")
def graph():
    modules = dict(project_modules())
    known = set(modules)
    return {name: imports_of(path, known) - {name} for name, path in modules.items()}


def test_every_utils_module_sits_in_a_layer(graph):
    loose = [name for name in graph if name.startswith("utils.") and layer_of(name) is None]
    assert not loose, f"utils modules outside the sub-packages: {loose}"
    assert not [path for path in (REPO_ROOT / "utils").glob("*.py") if path.name != "__init__.py"], \
        "utils/ keeps only sub-packages at its top"


def test_imports_go_one_way(graph):
    wrong = []
    for module, imported in graph.items():
        mine = layer_of(module)
        for target in imported:
            theirs = layer_of(target)
            if mine is None or theirs is None or mine[1] == theirs[1]:
                continue
            if theirs[0] >= mine[0]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the stated direction:\n" + "\n".join(sorted(wrong))


def find_cycle(graph):
    """One import circle as a list of modules, or None (iterative depth-first search)."""
    state = {}
    for start in graph:
        if state.get(start):
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            for child in children:
                if child not in graph:
                    continue
                if state.get(child) == 1:
                    return path[path.index(child):] + [child]
                if not state.get(child):
                    state[child] = 1
                    path.append(child)
                    stack.append((child, iter(sorted(graph[child]))))
                    break
            else:
                state[node] = 2
                path.pop()
                stack.pop()
    return None


def test_no_import_circles(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_checks_catch_what_they_look_for():
    """The two checks above on hand-made graphs: a circle and a wrong-way import are found."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    assert layer_of("utils.common.config")[0] < layer_of("utils.data.recordio")[0] < layer_of("utils.training.engine")[0]
    assert layer_of("utils.artifacts.manifests")[0] == layer_of("utils.training.engine")[0]
    assert layer_of("utils.artifacts.manifests")[1] != layer_of("utils.training.engine")[1]


def test_internals_map_names_every_module(graph):
    """docs/internals.md has one line per utils module: a module added or moved shows up there."""
    text = (REPO_ROOT / "docs" / "internals.md").read_text()
    missing = [name for name in graph if name.startswith("utils.") and name.count(".") == 2
               and f"`{name.replace('.', '/')}.py`" not in text]
    assert not missing, f"modules missing from docs/internals.md: {missing}"


def test_every_module_imports(graph):
    """Every module of the library and every script imports (a path left behind by a move fails here,
    not first in a user's hands). Scripts keep their work under `if __name__ == "__main__"`."""
    import importlib
    failed = []
    for name in sorted(graph):
        if name.startswith("BCT_methods.") and name.endswith(".train"):
            continue   # six files with one module name each: imported by path below
        try:
            importlib.import_module(name)
        except Exception as error:   # noqa: BLE001 - the test lists every failure at once
            failed.append(f"{name}: {type(error).__name__}: {error}")
    for path in sorted((REPO_ROOT / "BCT_methods").glob("*/train.py")):
        spec = importlib.util.spec_from_file_location(f"method_{path.parent.name}", path)
        try:
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
        except Exception as error:   # noqa: BLE001
            failed.append(f"{path.relative_to(REPO_ROOT)}: {type(error).__name__}: {error}")
    assert not failed, "modules that do not import:\n" + "\n".join(failed)
