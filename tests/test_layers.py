"""The package's layers, drawn from its imports: data flows one way (adapters -> heads ->
modeling / training -> config -> stores), no module imports itself back through
others, and modeling and training stay apart. A new import that breaks a rule fails
here with the import that did it."""
from __future__ import annotations

import ast
from pathlib import Path

from helpers.paths import ROOT

PACKAGE = ROOT / "ph"
# Lower numbers are lower layers; a module may import its own layer or lower ones.
LAYERS = [
    (0, ("ph.errors", "ph.settings", "ph.metrics", "ph.logs")),
    (1, ("ph.stores",)),
    (2, ("ph.config",)),
    (3, ("ph.modeling", "ph.training")),
    (4, ("ph.heads",)),
    (5, ("ph.api",)),
    (6, ("ph.server", "ph.adapters", "ph.deploy", "ph.__main__", "ph")),
]
APART = ("ph.modeling", "ph.training")  # siblings: the heads layer joins them


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer(module: str) -> int:
    """The layer of the longest prefix that names `module`'s package."""
    best = None
    for level, prefixes in LAYERS:
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > len(best[1]):
                    best = (level, prefix)
    assert best is not None, f"{module} belongs to no layer: add it to LAYERS"
    return best[0]


def type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of import nodes under `if TYPE_CHECKING:` (annotations only, never run)."""
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            inside |= {id(n) for n in ast.walk(node)}
    return inside


def imports_of(module: str) -> list[tuple[str, int]]:
    """(imported ph module, line) for every import that runs, at any depth."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    skip = type_checking_nodes(tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in skip or not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Import):
            candidates = [[alias.name] for alias in node.names]
        else:
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level \
                else []
            target = ".".join(base + ([node.module] if node.module else []))
            candidates = [[f"{target}.{alias.name}", target] for alias in node.names]
        for names in candidates:
            hit = next((n for n in names if n in MODULES), None)
            if hit is not None and hit != module:
                found.append((hit, node.lineno))
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def test_every_import_goes_to_the_same_or_a_lower_layer():
    upward = [f"{m}:{line} imports {t} (layer {layer(m)} -> {layer(t)})"
              for m, edges in GRAPH.items() for t, line in edges if layer(t) > layer(m)]
    assert not upward, "\n".join(upward)


def test_modeling_and_training_do_not_import_each_other():
    crossing = [f"{m}:{line} imports {t}" for m, edges in GRAPH.items() for t, line in edges
                if any(m.startswith(a) for a in APART) and any(t.startswith(b) for b in APART)
                and m.split(".")[1] != t.split(".")[1]]
    assert not crossing, "\n".join(crossing)


def test_no_module_imports_itself_back_through_others():
    """No circle between modules, counting imports inside functions (a lazy import that
    dodges a cycle is still a cycle)."""
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target, _ in GRAPH[module]:
            if state.get(target) == 1:
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)
    assert not cycles, "\n".join(cycles)


def test_the_graph_is_read_and_every_module_has_a_layer():
    assert len(MODULES) > 30 and all(layer(m) >= 0 for m in MODULES)
    assert "ph.stores" in {t for t, _ in GRAPH["ph.heads.service"]}  # the parser sees imports
