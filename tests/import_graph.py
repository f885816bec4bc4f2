"""Print faultpath's import graph: between packages, and the circles inside them.

    python tests/import_graph.py            # package graph + circle count
    python tests/import_graph.py --modules  # every module edge too

Edges come from every import statement in a module (top level or inside a
function); imports under `if TYPE_CHECKING:` are type-only and listed apart,
since they never run.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("emulator", "mm", "vdso")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = mod.split(".")
    if not is_pkg:
        base = base[:-1]
    if node.level > 1:
        base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test):
            for sub in n.body:
                for s in ast.walk(sub):
                    out.add(id(s))
    return out


def scan() -> tuple[set[str], dict[str, set[str]], dict[str, set[str]]]:
    """(modules, runtime edges, type-only edges) among the project's modules."""
    files = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            files[module_name(p)] = p
    mods = set(files)

    def target(name: str) -> str | None:
        while name:
            if name in mods:
                return name
            name = name.rpartition(".")[0]
        return None

    runtime: dict[str, set[str]] = {m: set() for m in mods}
    typed: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        tc = _type_checking_nodes(tree)
        is_pkg = path.name == "__init__.py"
        for n in ast.walk(tree):
            names = []
            if isinstance(n, ast.Import):
                names = [a.name for a in n.names]
            elif isinstance(n, ast.ImportFrom):
                base = _resolve(mod, is_pkg, n)
                names = [f"{base}.{a.name}" for a in n.names] + [base]
            for name in names:
                t = target(name)
                if t is None or t == mod:
                    continue
                # "from pkg import sub" names the submodule; "from pkg import X" the package
                (typed if id(n) in tc else runtime)[mod].add(t)
    for mod in mods:      # a package's own __init__ is not an edge from its children
        for d in (runtime, typed):
            d[mod] = {t for t in d[mod] if not (mod.startswith(t + ".") and t in PACKAGES)}
    return mods, runtime, typed


def sccs(nodes: set[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in nodes:
                continue
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

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def package_of(mod: str) -> str:
    """The innermost package a module belongs to (emulator.sweep.runner.oracle -> emulator.sweep.runner)."""
    parts = mod.split(".")
    if (ROOT.joinpath(*parts) / "__init__.py").exists():
        return mod
    return ".".join(parts[:-1]) or mod


def package_graph(mods: set[str], edges: dict[str, set[str]]) -> dict[str, set[str]]:
    g: dict[str, set[str]] = {}
    for m in mods:
        pm = package_of(m)
        g.setdefault(pm, set())
        for t in edges[m]:
            pt = package_of(t)
            if pt != pm:
                g[pm].add(pt)
    return g


def main(argv: list[str]) -> int:
    mods, runtime, typed = scan()
    both = {m: runtime[m] | typed[m] for m in mods}
    pg = package_graph(mods, runtime)
    print("package -> packages it imports (runtime)")
    for p in sorted(pg):
        print(f"  {p:28s} -> {', '.join(sorted(pg[p])) or '-'}")
    pcyc = sccs(set(pg), pg)
    print(f"circles between packages: {len(pcyc)}")
    for c in pcyc:
        print("  " + " <-> ".join(c))
    rc = sccs(mods, runtime)
    ac = sccs(mods, both)
    print(f"module circles (runtime imports): {len(rc)}")
    for c in rc:
        print(f"  {len(c)}: " + ", ".join(c))
    print(f"module circles (counting type-only imports too): {len(ac)}")
    for c in ac:
        print(f"  {len(c)}: " + ", ".join(c))
    if "--modules" in argv:
        for m in sorted(mods):
            print(f"{m}: {', '.join(sorted(runtime[m]))}" + (f"  [types: {', '.join(sorted(typed[m]))}]" if typed[m] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
