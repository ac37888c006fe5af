"""The package layout: no import cycles between supportchat's packages.

Every module under ``supportchat/`` is parsed (not imported) and its
module-level imports are collected; imports inside functions and under
``if TYPE_CHECKING:`` are not counted (they run late, or never). Each
import is mapped to its package: ``supportchat.storage.sql`` belongs to
``supportchat.storage``; a top-level module such as ``supportchat.server``
is its own node. A cycle between nodes means neither side can be read,
tested or replaced without the other.
"""

from __future__ import annotations

import ast
import os

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "supportchat"



def _modules() -> dict[str, str]:
    """Dotted module name -> source path, for every module of the package."""
    out: dict[str, str] = {}
    base = os.path.join(ROOT, PACKAGE)
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__")))
        if "__init__.py" not in filenames:
            dirnames[:] = []
            continue
        rel = os.path.relpath(dirpath, ROOT).split(os.sep)
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            parts = rel if name == "__init__.py" else rel + [name[:-3]]
            out[".".join(parts)] = os.path.join(dirpath, name)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.Module, lazy: bool) -> list[ast.Import | ast.ImportFrom]:
    """Imports executed when the module is imported: the top level and the
    bodies of classes, ``if``, ``try`` and ``with`` there; never those under
    ``if TYPE_CHECKING:`` (its ``else`` branch does count). With ``lazy``
    also those inside functions, which run on first call."""
    found: list[ast.Import | ast.ImportFrom] = []

    def walk(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append(node)
            elif isinstance(node, ast.If):
                if not _is_type_checking(node.test):
                    walk(node.body)
                walk(node.orelse)
            elif isinstance(node, ast.Try):
                walk(node.body)
                for handler in node.handlers:
                    walk(handler.body)
                walk(node.orelse)
                walk(node.finalbody)
            elif isinstance(node, (ast.With, ast.ClassDef, ast.For, ast.While)):
                walk(node.body)
            elif lazy and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                walk(node.body)

    walk(tree.body)
    return found


def _imported_modules(module: str, path: str, known: set[str], lazy: bool = False) -> set[str]:
    """The package's modules that ``module`` imports at module level;
    ``from a import b`` names the module ``a.b`` when that is a module."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    is_package = path.endswith("__init__.py")
    out: set[str] = set()
    for node in _imports(tree, lazy):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
            continue
        if node.level:
            anchor = module.split(".") if is_package else module.split(".")[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        out.add(base)
        for alias in node.names:
            if f"{base}.{alias.name}" in known:
                out.add(f"{base}.{alias.name}")
    return {m for m in out if m in known}


def node_of(module: str) -> str:
    """``supportchat.storage.sql`` -> ``supportchat.storage``; a top-level
    module (``supportchat.server``) and the package itself are their own node."""
    parts = module.split(".")
    return ".".join(parts[:2])


def package_graph(lazy: bool = False) -> dict[str, set[str]]:
    """Node -> the nodes it imports at module level (itself excluded);
    ``lazy`` adds the imports inside functions."""
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {node_of(m): set() for m in modules}
    for module, path in modules.items():
        src = node_of(module)
        for target in _imported_modules(module, path, known, lazy):
            dst = node_of(target)
            if dst != src:
                graph[src].add(dst)
    return graph


def edges_into(src: str, dst: str, lazy: bool) -> list[str]:
    """Which modules of ``src`` import ``dst`` (for the message)."""
    modules = _modules()
    known = set(modules)
    return sorted(
        m for m, path in modules.items()
        if node_of(m) == src and any(node_of(t) == dst for t in _imported_modules(m, path, known, lazy))
    )


def all_cycles(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """Every elementary cycle, each once, starting at its smallest node."""
    cycles: list[tuple[str, ...]] = []
    nodes = sorted(graph)
    for start in nodes:
        # Only cycles whose smallest node is ``start``: each is found once.
        stack: list[tuple[str, list[str]]] = [(start, [start])]
        while stack:
            here, path = stack.pop()
            for nxt in sorted(graph[here]):
                if nxt == start:
                    cycles.append(tuple(path))
                elif nxt > start and nxt not in path:
                    stack.append((nxt, path + [nxt]))
    return sorted(set(cycles))


def _describe(cycle: tuple[str, ...], lazy: bool) -> str:
    hops = []
    for i, src in enumerate(cycle):
        dst = cycle[(i + 1) % len(cycle)]
        hops.append(f"  {src} -> {dst}  (in {', '.join(edges_into(src, dst, lazy))})")
    return " -> ".join(cycle + (cycle[0],)) + "\n" + "\n".join(hops)


class ImportCycleTests(SynchronousTestCase):
    def test_graph_sees_the_packages(self) -> None:
        """The parser finds the package's modules and their imports: the
        container imports storage, and storage's modules map to one node."""
        graph = package_graph()
        for name in ("supportchat.config", "supportchat.storage", "supportchat.server", "supportchat.app"):
            self.assertIn(name, graph)
        self.assertIn("supportchat.storage", graph["supportchat.server"])
        self.assertEqual(node_of("supportchat.storage.sql"), "supportchat.storage")
        self.assertEqual(node_of("supportchat.tap"), "supportchat.tap")

    def test_no_import_cycles_between_packages(self) -> None:
        """No package imports (at module level) a package that imports it
        back, directly or through others; every cycle is printed with the
        modules that make each hop."""
        bad = all_cycles(package_graph())
        if bad:
            self.fail("import cycles between supportchat packages:\n" + "\n".join(_describe(c, False) for c in bad))

    def test_no_cycles_through_lazy_imports(self) -> None:
        """Counting imports inside functions too (they run on first call),
        still no cycle: a lazy import hides a cycle from the interpreter,
        not from the reader. The container's lazy imports are fine because
        no package imports the container."""
        bad = all_cycles(package_graph(lazy=True))
        if bad:
            self.fail("cycles through lazy imports:\n" + "\n".join(_describe(c, True) for c in bad))

    def test_cycle_finder_reports_each_cycle(self) -> None:
        """The finder reports every elementary cycle once (a two-node and a
        three-node one sharing a node) and nothing for an acyclic graph."""
        graph = {"a": {"b"}, "b": {"a", "c"}, "c": {"d"}, "d": {"b"}, "e": {"a"}}
        self.assertEqual(all_cycles(graph), [("a", "b"), ("b", "c", "d")])
        self.assertEqual(all_cycles({"a": {"b"}, "b": {"c"}, "c": set()}), [])
