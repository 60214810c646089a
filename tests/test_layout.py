"""The package's layering: no module imports one that imports it back, lazily or not (type-only imports aside)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "art_gifd"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = PACKAGE.parent / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _type_only(tree: ast.Module) -> set[int]:
    """Ids of the import nodes under ``if TYPE_CHECKING:``."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            ids |= {id(child) for child in ast.walk(node)}
    return ids


def import_graph() -> dict[str, set[str]]:
    """Module → the package modules it imports anywhere in its body (functions included)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _type_only(tree)
        targets = graph.setdefault(name, set())
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("art_gifd"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    targets |= _with_packages(sub if _is_module(sub) else node.module)
            elif isinstance(node, ast.Import):
                targets |= {p for a in node.names if a.name.startswith("art_gifd") for p in _with_packages(a.name)}
        targets.discard(name)
    return graph


def _with_packages(module: str) -> set[str]:
    """``module`` and the packages whose ``__init__`` importing it runs first (the root package aside)."""
    parts = module.split(".")
    return {".".join(parts[:end]) for end in range(2, len(parts) + 1)}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = import_graph()
    assert {"art_gifd.federated", "art_gifd.store", "art_gifd.cli"} <= set(graph)
    # a package's __init__ re-exports its submodules, which import from their siblings: those edges are the package's
    # own layering, not a cycle
    edges = {
        module: {t for t in targets if not (module.startswith(t + ".") and t in graph)}
        for module, targets in graph.items()
    }
    assert _cycle(edges) is None, f"import cycle: {' -> '.join(_cycle(edges) or [])}"


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
