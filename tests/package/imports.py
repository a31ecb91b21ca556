"""The package's import graph from its source (AST, function-level imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "uae_ray"


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """``{dotted module name: file}`` of every module under ``root`` (packages by their ``__init__``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imported_names(path: Path, module: str) -> list[tuple[str, int]]:
    """Absolute dotted names imported anywhere in a file, with their line: ``import a.b`` gives
    ``a.b``; ``from a import b`` gives ``a.b`` (``a`` itself when ``b`` is not a submodule is
    decided by :func:`graph`); relative imports are resolved against ``module``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                head = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(head + ([node.module] if node.module else []))
            out.append((base, node.lineno))
            out += [(f"{base}.{a.name}", node.lineno) for a in node.names if a.name != "*"]
    return out


def graph(files: dict[str, Path] | None = None) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``. ``from pkg import sub`` counts as an edge to
    the submodule ``pkg.sub`` only (the package ``__init__`` that Python runs first is not an
    edge: it would make every package that re-exports a submodule a circle)."""
    files = files or module_files()
    edges: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        names = [n for n, _ in imported_names(path, module)]
        for name in names:
            if name in files and name != module:
                if any(other.startswith(name + ".") and other in files for other in names):
                    continue  # "from pkg import sub": the edge is to pkg.sub
                edges[module].add(name)
            elif name.rpartition(".")[0] in files and name.rpartition(".")[0] != module:
                edges[module].add(name.rpartition(".")[0])  # "from pkg.mod import function"
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def violations(files: dict[str, Path], layers: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    """``"module:line imports name"`` for every import of a ``forbidden`` prefix (dotted, matched
    on whole components) by a module under one of ``layers``."""
    def under(name: str, prefix: str) -> bool:
        return name == prefix or name.startswith(prefix + ".")

    out = []
    for module, path in files.items():
        if any(under(module, layer) for layer in layers):
            for name, line in imported_names(path, module):
                if any(under(name, f) for f in forbidden):
                    out.append(f"{module}:{line} imports {name}")
    return sorted(set(out))
