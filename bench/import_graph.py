"""The package's import graph: module-level edges, function-local imports, and cycles.

    python bench/import_graph.py [--dot FILE]

A cycle is counted over all edges (module-level and function-local): a function-local import hides a cycle
from Python's loader, not from the reader.
"""
import argparse
import ast
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PKG = "bitembed_jax"


def modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in sorted((ROOT / PKG).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _target(name: str, mods) -> str | None:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def edges(mods) -> tuple[set, list]:
    """(module-level edges, function-local imports as (module, line, target))."""
    top, local = set(), []
    for mod, path in mods.items():
        tree = ast.parse(path.read_text())
        parents = {}
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                parents[child] = node
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            targets = {t for t in (_target(n, mods) for n in names) if t and t != mod}
            p, in_function = parents.get(node), False
            while p is not None:
                in_function |= isinstance(p, (ast.FunctionDef, ast.AsyncFunctionDef))
                p = parents.get(p)
            for t in targets:
                (local.append((mod, node.lineno, t)) if in_function else top.add((mod, t)))
    return top, local


def cycles(graph_edges) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    adj = {}
    for a, b in graph_edges:
        adj.setdefault(a, set()).add(b)
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in adj.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in list(adj):
        if v not in index:
            visit(v)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dot", help="also write the graph (module-level solid, function-local dashed) as Graphviz")
    args = ap.parse_args(argv)
    mods = modules()
    top, local = edges(mods)
    all_edges = top | {(a, b) for a, _, b in local}
    found = cycles(all_edges)
    print(f"{len(mods)} modules, {len(top)} module-level edges, {len(local)} function-local imports "
          f"of package modules, {len(found)} cycle(s)")
    for comp in found:
        print("  cycle: " + " <-> ".join(comp))
    if args.dot:
        with open(args.dot, "w") as f:
            f.write("digraph imports {\n")
            for a, b in sorted(top):
                f.write(f'  "{a}" -> "{b}";\n')
            for a, b in sorted({(a, b) for a, _, b in local}):
                f.write(f'  "{a}" -> "{b}" [style=dashed];\n')
            f.write("}\n")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
