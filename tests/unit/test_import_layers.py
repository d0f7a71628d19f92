"""The import map of ipsecd/: layers one way, no circles (docs/architecture.md, "Layers").

Built from the source with ``ast`` (nothing is imported), so a new import that runs
back up a layer, or closes a circle, fails here with the modules named.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "ipsecd"

# Lower numbers are lower layers; an import may only go to a strictly lower layer.
LAYERS = {
    "ipsecd": 0,  # the package root and its small shared modules
    "selectors": 0,
    "addresses": 0,
    "oserrors": 0,
    "crypto": 1,
    "pki": 1,
    "config": 2,
    "esp": 3,
    "ike": 3,
    "ah": 4,  # AH reuses ESP's replay window, counters and transport framing
    "dataplane": 5,
    "daemon": 6,
    "cli": 7,
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(modules: dict[str, Path]) -> tuple[dict[str, set[str]], dict[str, list[int]]]:
    """Module -> the ipsecd modules it imports; module -> lines of imports inside functions."""
    edges: dict[str, set[str]] = defaultdict(set)
    nested: dict[str, list[int]] = defaultdict(list)
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module]
                targets += [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            edges[name].update(t for t in targets if t in modules and t != name)
        for function in ast.walk(tree):
            if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                nested[name] += [
                    n.lineno
                    for n in ast.walk(function)
                    if isinstance(n, ast.Import | ast.ImportFrom)
                ]
    return edges, nested


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_every_module_has_a_layer() -> None:
    assert {_layer(m) for m in _modules()} <= set(LAYERS), "add the new package to LAYERS"


def test_imports_only_go_down() -> None:
    edges, _ = _imports(_modules())
    upward = sorted(
        f"{a} -> {b}"
        for a, targets in edges.items()
        for b in targets
        if _layer(a) != _layer(b) and LAYERS[_layer(b)] >= LAYERS[_layer(a)]
    )
    assert upward == []


def test_no_import_circles() -> None:
    """Tarjan's strongly connected components over the module graph: none larger than one."""
    edges, _ = _imports(_modules())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(_modules()):
        if module not in index:
            visit(module)
    assert circles == []


def test_no_function_level_imports_in_the_ike_core() -> None:
    """An import inside a function hides a dependency; in ike/ each needs a comment why."""
    modules = _modules()
    _, nested = _imports(modules)
    unexplained = []
    for module, lines in nested.items():
        if _layer(module) != "ike":
            continue
        source = modules[module].read_text().splitlines()
        unexplained += [f"{module}:{n}" for n in lines if "#" not in source[n - 1]]
    assert unexplained == []
