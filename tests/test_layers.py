"""The import graph of server/: dependencies point down the layers, and never in a circle.

Each module under server/ is parsed with `ast` (not imported: an import that only
happens inside a function, under `if TYPE_CHECKING:` or in an `except ImportError:`
branch counts just the same, because it is still a dependency a reader has to know
about).  Every `import` / `from ... import` naming a server module is resolved to the
module it loads, and two rules are checked:

* layers: a module may import from its own package or from a package of lower rank
  (the table below, docs/design.md "The packages").  ftp sits at rank 1
  beside http but may import core alone.  A package missing from the table fails the
  test, so a new layer has to be given a place before it can land.
* no cycles: the module graph (edges to the module an import executes; `from pkg
  import name` is an edge to `pkg.name` when that is a module, else to `pkg`'s
  `__init__`) has no strongly connected component larger than one module.

The second half of the file plants violations in a small tree under tmp_path and
checks that the same checker reports each one, so a checker that silently found
nothing could not pass.
"""

from __future__ import annotations

import ast
import functools
import textwrap
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Layer ranks (docs/design.md).  Keys are the first component below the top package;
# "" is the top level (server/__init__.py, __main__, cli.py, config.py).
RANKS: dict[str, int] = {
    "core": 0,
    "http": 1,
    "ftp": 1,
    "static": 2,
    "framework": 3,
    "asgi": 4,
    "websocket": 4,
    "": 5,
}
# Packages whose allowed imports are narrower than "own package or lower rank".
ONLY: dict[str, frozenset[str]] = {"ftp": frozenset({"core"})}
# The one sideways edge allowed within a rank: the ASGI adapter serves the ASGI
# websocket scope with server.websocket (whose docstring forbids the reverse).
SIDEWAYS: dict[str, frozenset[str]] = {"asgi": frozenset({"websocket"})}

# Cycle edges tolerated until their owner removes them (the list only shrinks; it is
# empty now: the FTP session gets its command table and service through the
# SessionHost protocol instead of importing them).
# Each entry: (importing module prefix, imported module, where).
TOLERATED_CYCLE_EDGES: list[tuple[str, str, str]] = []


@dataclass(frozen=True)
class Edge:
    source: str       # importing module, dotted
    target: str       # imported module, dotted
    line: int
    where: str        # "module", "function", "TYPE_CHECKING"

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} (line {self.line}, {self.where} level)"


def module_files(root: Path, top: str) -> dict[str, Path]:
    """Dotted module name → file, for every .py under root/top."""
    found: dict[str, Path] = {}
    for path in sorted((root / top).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Imports(ast.NodeVisitor):
    """Collect every import in a module with the kind of place it appears in."""

    def __init__(self) -> None:
        self.found: list[tuple[ast.Import | ast.ImportFrom, str]] = []
        self._where = ["module"]

    def _nested(self, node: ast.AST, where: str) -> None:
        self._where.append(where)
        self.generic_visit(node)
        self._where.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._nested(node, "function")

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._nested(node, "function")

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self._where.append("TYPE_CHECKING")
            for child in node.body:
                self.visit(child)
            self._where.pop()
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found.append((node, self._where[-1]))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        self.found.append((node, self._where[-1]))


def import_edges(root: Path, top: str) -> tuple[list[Edge], dict[str, Path]]:
    return _import_edges(root, top, tuple(sorted((p.as_posix(), p.stat().st_mtime_ns)
                                                 for p in (root / top).rglob("*.py"))))


@functools.lru_cache(maxsize=8)
def _import_edges(root: Path, top: str, _version: tuple[tuple[str, int], ...]) -> tuple[list[Edge], dict[str, Path]]:
    """Parsed once per tree state (`_version`: every file and its mtime)."""
    modules = module_files(root, top)
    edges: list[Edge] = []
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        collector = _Imports()
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        for node, where in collector.found:
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base_parts = package.split(".")
                    if node.level > 1:
                        base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                    base = ".".join(base_parts)
                    origin = f"{base}.{node.module}" if node.module else base
                else:
                    origin = node.module or ""
                for alias in node.names:
                    sub = f"{origin}.{alias.name}"
                    targets.append(sub if sub in modules else origin)
            for target in targets:
                if target == top or target.startswith(top + "."):
                    # `import server.core.message` executes that module (the nearest
                    # existing one, for a dotted name that ends in an attribute).
                    while target not in modules and "." in target:
                        target = target.rpartition(".")[0]
                    if target != name:
                        edges.append(Edge(name, target, node.lineno, where))
    return edges, modules


def layer_of(module: str, packages: set[str]) -> str:
    """The layer a dotted module belongs to: "core", "http", ..., or "" for the top level."""
    parts = module.split(".")
    if len(parts) == 1 or (len(parts) == 2 and module not in packages):
        return ""           # server/__init__, server/cli.py, server/config.py, ...
    return parts[1]


def layer_violations(root: Path, top: str) -> list[str]:
    edges, modules = import_edges(root, top)
    packages = {n for n, p in modules.items() if p.name == "__init__.py"}
    problems: list[str] = []
    for module in sorted(modules):
        layer = layer_of(module, packages)
        if layer not in RANKS and module == f"{top}.{layer}":
            problems.append(f"{module}: package {top}.{layer} has no rank in the layer table "
                            f"(tests/test_layers.py RANKS, docs/design.md)")
    for edge in edges:
        source, target = layer_of(edge.source, packages), layer_of(edge.target, packages)
        if source == target or source not in RANKS or target not in RANKS:
            continue
        allowed = ONLY.get(source)
        if allowed is not None:
            if target not in allowed:
                problems.append(f"{edge}: {top}.{source} may import only "
                                f"{', '.join(top + '.' + a for a in sorted(allowed))}")
        elif target in SIDEWAYS.get(source, frozenset()):
            continue
        elif RANKS[target] >= RANKS[source]:
            problems.append(f"{edge}: {top}.{source or '<top>'} (rank {RANKS[source]}) imports "
                            f"{top}.{target or '<top>'} (rank {RANKS[target]}); only lower ranks may be imported")
    return problems


def _tolerated(edge: Edge, tolerated: list[tuple[str, str, str]]) -> bool:
    return any(edge.source.startswith(source) and edge.target == target and edge.where == where
               for source, target, where in tolerated)


def import_cycles(root: Path, top: str, tolerated: list[tuple[str, str, str]] | None = None) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    edges, modules = import_edges(root, top)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for edge in edges:
        if not _tolerated(edge, tolerated or []):
            graph[edge.source].add(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:   # recursion depth is bounded by the module count
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def _describe_cycles(root: Path, top: str, cycles: list[list[str]]) -> str:
    edges, _ = import_edges(root, top)
    lines = []
    for component in cycles:
        members = set(component)
        lines.append("cycle among " + ", ".join(component) + ":")
        lines += [f"    {e}" for e in edges if e.source in members and e.target in members]
    return "\n".join(lines)


# -- the real tree ---------------------------------------------------------------------------

def test_no_upward_import_between_layers():
    problems = layer_violations(REPO, "server")
    assert not problems, "upward or sideways imports between layers:\n" + "\n".join(problems)


# What may sit at the top of server/: the package faces (the public handler API, the
# `python -m server` entry point, the public test client), the CLI and the configuration.
TOP_LEVEL_MODULES = frozenset({"__init__.py", "__main__.py", "testing.py", "cli.py", "config.py"})


def test_the_top_of_server_holds_only_faces_cli_config_and_layer_packages():
    top = REPO / "server"
    modules = {p.name for p in top.glob("*.py")}
    assert modules <= TOP_LEVEL_MODULES, f"modules that belong in a layer package: {sorted(modules - TOP_LEVEL_MODULES)}"
    packages = {p.name for p in top.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages <= set(RANKS) - {""}, f"packages without a rank: {sorted(packages - set(RANKS))}"


def test_no_import_cycle_between_modules():
    cycles = import_cycles(REPO, "server", TOLERATED_CYCLE_EDGES)
    assert not cycles, _describe_cycles(REPO, "server", cycles)


def test_every_tolerated_cycle_edge_still_exists():
    """A tolerated edge that is gone must leave the list, so the list only shrinks."""
    edges, _ = import_edges(REPO, "server")
    stale = [t for t in TOLERATED_CYCLE_EDGES if not any(_tolerated(e, [t]) for e in edges)]
    assert not stale, f"remove from TOLERATED_CYCLE_EDGES (no longer imported): {stale}"


def test_the_checker_sees_the_whole_tree():
    edges, modules = import_edges(REPO, "server")
    assert {"server", "server.core.message", "server.http.session", "server.framework.routing",
            "server.ftp.session", "server.cli"} <= set(modules)
    # A known edge of each kind the parser has to resolve: relative, two levels up.
    assert any(e.source == "server.framework.routing" and e.target == "server.static.site" for e in edges)
    assert any(e.source == "server.core.transmitter" and e.target == "server.core.message" for e in edges)


# -- the checker fails on planted violations ---------------------------------------------------

def _plant(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


CLEAN = {
    "pkg/__init__.py": "from .framework.app import App\n",
    "pkg/cli.py": "from pkg.framework.app import App\n",
    "pkg/core/__init__.py": "",
    "pkg/core/message.py": "X = 1\n",
    "pkg/http/__init__.py": "",
    "pkg/http/session.py": "from ..core.message import X\n",
    "pkg/ftp/__init__.py": "",
    "pkg/ftp/session.py": "from ..core import message\n",
    "pkg/static/__init__.py": "",
    "pkg/static/site.py": "from pkg.http import session\n",
    "pkg/framework/__init__.py": "",
    "pkg/framework/app.py": "from ..static.site import *\nclass App: pass\n",
}


def test_checker_passes_a_clean_tree(tmp_path):
    root = _plant(tmp_path, CLEAN)
    assert layer_violations(root, "pkg") == []
    assert import_cycles(root, "pkg") == []


def test_checker_reports_an_upward_import_under_type_checking(tmp_path):
    root = _plant(tmp_path, {**CLEAN, "pkg/core/message.py": """
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from ..http.session import Session
        X = 1
        """})
    problems = layer_violations(root, "pkg")
    assert len(problems) == 1
    assert "pkg.core.message -> pkg.http.session" in problems[0] and "TYPE_CHECKING" in problems[0]


def test_checker_reports_an_upward_import_inside_a_function(tmp_path):
    root = _plant(tmp_path, {**CLEAN, "pkg/http/session.py": """
        from ..core.message import X
        def later():
            import pkg.static.site
            from pkg import cli
        """})
    problems = layer_violations(root, "pkg")
    assert len(problems) == 2
    assert all("function level" in p for p in problems)
    assert any("pkg.http.session -> pkg.static.site" in p for p in problems)
    assert any("pkg.http.session -> pkg.cli" in p for p in problems)


def test_checker_reports_ftp_reaching_past_core_and_a_sideways_import(tmp_path):
    root = _plant(tmp_path, {**CLEAN,
                             "pkg/ftp/session.py": "from ..http.session import *\n",
                             "pkg/http/session.py": "from ..ftp import session\n"})
    problems = layer_violations(root, "pkg")
    assert any("pkg.ftp.session -> pkg.http.session" in p and "may import only pkg.core" in p for p in problems)
    assert any("pkg.http.session -> pkg.ftp.session" in p for p in problems)


def test_checker_allows_only_the_declared_sideways_edge(tmp_path):
    ok = _plant(tmp_path / "ok", {**CLEAN, "pkg/websocket/__init__.py": "", "pkg/asgi/__init__.py": "",
                                  "pkg/asgi/app.py": "from ..websocket import native\n",
                                  "pkg/websocket/native.py": "from ..framework.app import App\n"})
    assert layer_violations(ok, "pkg") == []
    bad = _plant(tmp_path / "bad", {**CLEAN, "pkg/websocket/__init__.py": "", "pkg/asgi/__init__.py": "",
                                    "pkg/asgi/app.py": "X = 1\n",
                                    "pkg/websocket/native.py": "from ..asgi import app\n"})
    problems = layer_violations(bad, "pkg")
    assert len(problems) == 1 and "pkg.websocket.native -> pkg.asgi.app" in problems[0]


def test_checker_reports_a_package_without_a_rank(tmp_path):
    root = _plant(tmp_path, {**CLEAN, "pkg/shiny/__init__.py": "", "pkg/shiny/thing.py": "X = 2\n"})
    problems = layer_violations(root, "pkg")
    assert any("pkg.shiny has no rank" in p for p in problems)


def test_checker_reports_a_cycle_within_a_layer(tmp_path):
    root = _plant(tmp_path, {**CLEAN,
                             "pkg/core/message.py": "def f():\n    from .loans import Y\nX = 1\n",
                             "pkg/core/loans.py": "from .message import X\nY = 2\n"})
    assert layer_violations(root, "pkg") == []
    assert import_cycles(root, "pkg") == [["pkg.core.loans", "pkg.core.message"]]


def test_checker_reports_a_cycle_through_a_package_init(tmp_path):
    # core/__init__ re-exports message; message takes a name from the package itself.
    root = _plant(tmp_path, {**CLEAN,
                             "pkg/core/__init__.py": "from .message import X\nLIMIT = 3\n",
                             "pkg/core/message.py": "from . import LIMIT\nX = 1\n"})
    assert import_cycles(root, "pkg") == [["pkg.core", "pkg.core.message"]]
