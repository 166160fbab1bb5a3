"""Print volsam's internal import graph and its circles (read from the source with ``ast``; nothing is imported).

    python scripts/import_graph.py            edges per module, then every circle (exit status 1 if any)
    python scripts/import_graph.py --cycles   the circles only

Every ``import``/``from ... import`` of a ``volsam`` module counts, wherever it stands: at module level,
inside a function (a "late import" is still a dependency, it only hides the circle from the interpreter)
or under ``if TYPE_CHECKING:`` (marked ``(type)``: a reader still needs the other module to follow the
types). ``from volsam.x import y`` points at ``volsam.x.y`` when that is a module, else at ``volsam.x``.
Importing a submodule also runs its packages' ``__init__``; those implicit edges are left out, or every
module would form a circle with ``volsam/__init__.py``.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules(src: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``src/package``."""
    out = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _type_checking_lines(tree: ast.Module) -> set[int]:
    """Line numbers of statements inside ``if TYPE_CHECKING:`` blocks."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else ""
            if name == "TYPE_CHECKING":
                for stmt in node.body:
                    lines.update(range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1))
    return lines


def import_graph(src: Path = SRC, package: str = "volsam") -> dict[str, dict[str, bool]]:
    """``{module: {imported module: type_only}}`` over the package's own modules.

    ``type_only`` is True when every import of that target stands under ``if TYPE_CHECKING:``.
    """
    mods = _modules(src, package)
    graph: dict[str, dict[str, bool]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        typed = _type_checking_lines(tree)
        is_pkg = path.name == "__init__.py"
        edges: dict[str, bool] = {}
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                while t and t not in mods:  # `import volsam.io.x` style names: the longest known prefix
                    t = t.rpartition(".")[0]
                if t and t != name:
                    type_only = node.lineno in typed
                    edges[t] = edges.get(t, True) and type_only
        graph[name] = edges
    return graph


def cycles(graph: dict[str, dict[str, bool]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted, largest first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out, key=lambda c: (-len(c), c))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cycles", action="store_true", help="print only the circles")
    p.add_argument("--src", type=Path, default=SRC, help="folder holding the package (default: this checkout's src)")
    args = p.parse_args(argv)
    graph = import_graph(args.src)
    if not args.cycles:
        for mod in sorted(graph):
            deps = ", ".join(f"{t}{' (type)' if typed else ''}" for t, typed in sorted(graph[mod].items()))
            print(f"{mod} -> {deps or '-'}")
        print()
    found = cycles(graph)
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} edges, {len(found)} circle(s)")
    for comp in found:
        inner = [f"{a} -> {b}" for a in comp for b in graph[a] if b in comp]
        print("circle: " + " | ".join(inner))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
