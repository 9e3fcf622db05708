"""The package's stages import only downward, and no two modules import each other in a circle.

core < models < export < calib < engines < runtime < {train, eval, deploy} < cli

Every ``import``/``from ... import`` of an rfdeploy module counts, at module level and inside
functions alike (a function-local import is still a dependency). Stages on the same level
(train, eval, deploy) may not import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "rfdeploy"
PACKAGE = "rfdeploy"

# stage -> level; a module may import its own stage or any stage of a lower level.
LEVELS = {
    "core": 0,
    "models": 1,
    "export": 2,
    "calib": 3,
    "engines": 4,
    "runtime": 5,
    "train": 6,
    "eval": 6,
    "deploy": 6,
    "cli": 7,
}
# modules directly under rfdeploy/: the package root (its version string) and the command line
TOP_LEVEL = {"rfdeploy": "core", "rfdeploy.cli": "cli", "rfdeploy.__main__": "cli"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE_DIR.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _stage(module: str) -> str | None:
    if module in TOP_LEVEL:
        return TOP_LEVEL[module]
    parts = module.split(".")
    return parts[1] if len(parts) >= 2 and parts[1] in LEVELS else None


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of a dotted name that is a module of the package."""
    parts = name.split(".")
    while parts:
        cand = ".".join(parts)
        if cand in modules:
            return cand
        parts.pop()
    return None


def _imports(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported rfdeploy module, line) for every import statement anywhere in the file."""
    is_pkg = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                root = ".".join(base + ([node.module] if node.module else []))
            else:
                root = node.module or ""
            # `from pkg import sub` imports the submodule pkg.sub when there is one
            names = [f"{root}.{a.name}" if f"{root}.{a.name}" in modules else root for a in node.names]
        else:
            continue
        for n in names:
            if n == PACKAGE or n.startswith(PACKAGE + "."):
                target = _resolve(n, modules)
                if target is not None and target != module and (target, node.lineno) not in found:
                    found.append((target, node.lineno))
    return sorted(found, key=lambda e: e[1])


def _graph():
    modules = _modules()
    return modules, {m: _imports(m, p, modules) for m, p in modules.items()}


def _where(modules, module, line):
    return f"{modules[module].relative_to(PACKAGE_DIR.parent)}:{line}"


def test_every_module_belongs_to_a_stage():
    modules = _modules()
    stray = [str(p.relative_to(PACKAGE_DIR.parent)) for m, p in modules.items() if _stage(m) is None]
    assert not stray, f"modules outside every stage ({', '.join(LEVELS)}): {stray}"


def test_imports_follow_the_stage_order():
    modules, graph = _graph()
    bad = []
    for m, edges in graph.items():
        src = _stage(m)
        if src is None:
            continue
        for target, line in edges:
            dst = _stage(target)
            if dst is None or dst == src:
                continue
            if LEVELS[dst] >= LEVELS[src]:
                bad.append(f"{_where(modules, m, line)}: {src} imports {dst} ({target})")
    assert not bad, f"{len(bad)} imports against the stage order:\n" + "\n".join(bad)


def _cycles(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = 0
    adj = {m: sorted({t for t, _ in edges if t in graph}) for m, edges in graph.items()}
    for start in sorted(adj):
        if start in index:
            continue
        work = [(start, iter(adj[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
            elif nxt not in index:
                index[nxt] = low[nxt] = counter
                counter += 1
                stack.append(nxt)
                on_stack.add(nxt)
                work.append((nxt, iter(adj[nxt])))
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
    return out


def test_no_import_cycles():
    modules, graph = _graph()
    report = []
    for comp in _cycles(graph):
        members = set(comp)
        lines = [
            f"  {_where(modules, m, line)} imports {t}"
            for m in comp
            for t, line in graph[m]
            if t in members
        ]
        report.append(f"cycle between {', '.join(comp)}:\n" + "\n".join(lines))
    assert not report, f"{len(report)} import cycles:\n" + "\n".join(report)


def test_the_walker_sees_upward_imports_and_cycles(tmp_path):
    # the checks above are only as good as the walker: it must find both kinds of import
    src = "import os\nfrom rfdeploy.runtime import pipeline\n\ndef f():\n    from . import b\n"
    p = tmp_path / "a.py"
    p.write_text(src)
    mods = {"rfdeploy.runtime.pipeline": p, "rfdeploy.core.a": p, "rfdeploy.core.b": p}
    edges = _imports("rfdeploy.core.a", p, mods)
    assert edges == [("rfdeploy.runtime.pipeline", 2), ("rfdeploy.core.b", 5)]
    graph = {"x": [("y", 1)], "y": [("z", 1)], "z": [("x", 3)], "w": [("x", 1)]}
    assert _cycles(graph) == [["x", "y", "z"]]
