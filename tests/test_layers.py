"""The layers of docs/architecture.md, checked: a module never imports a layer above its own, no two modules
import each other (directly or round a longer cycle), and each name has one import path.

Read from the source with ast: imports inside functions and under ``TYPE_CHECKING`` count too, so
neither a lazy import nor a type-only one can slip an upward dependency or a cycle past the rules.
"""

from __future__ import annotations

import ast
from pathlib import Path

from testpaths import ROOT

SRC = ROOT / "src" / "vxdp"

# lowest first; modules of one rank may import each other's rank only where listed as peers
RANKS: dict[str, int] = {
    "frames": 0, "packets": 0, "eventloop": 0, "jitcache": 0, "sockpath": 0,
    "rpc": 1, "bpf": 1,  # rpc binds its socket through sockpath
    "bpf.kernel": 2,
    "engine": 3,
    "virtio": 4, "netdev": 4,
    "offload": 5, "vhost_user": 5,  # the offload protocol sits on virtio's ctrl framing; vhost_user beside it
    "host": 6, "guest": 6,
    "testing": 7,
    "bench": 8,
    "cli": 9,
}


def layer_of(module: str) -> str:
    """The layer a dotted name under vxdp belongs to (longest matching prefix)."""
    best = ""
    for layer in RANKS:
        if (module == layer or module.startswith(layer + ".")) and len(layer) > len(best):
            best = layer
    return best


def imports(path: Path) -> list[tuple[int, str]]:
    pkg = ".".join(path.relative_to(SRC).with_suffix("").parts)
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name[5:]) for a in node.names if a.name.startswith("vxdp.")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: -node.level] if path.name != "__init__.py" else pkg.split(".")[
                    : len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("vxdp."):
                mod = node.module[5:]
            else:
                continue
            names = [f"{mod}.{a.name}" if mod else a.name for a in node.names]
            out += [(node.lineno, n if layer_of(n) else mod) for n in names]
    return out


def test_no_module_imports_a_higher_layer():
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        here = layer_of(".".join(path.relative_to(SRC).with_suffix("").parts))
        if not here:
            continue
        for line, target in imports(path):
            there = layer_of(target)
            if not there or there == here:
                continue  # a package's own subpackage is a layer of its own (bpf.kernel above bpf)
            if RANKS[there] >= RANKS[here]:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {here} imports {target} ({there})")
    assert not wrong, "\n".join(wrong)


def test_every_module_has_a_layer():
    modules = [".".join(p.relative_to(SRC).with_suffix("").parts) for p in SRC.rglob("*.py")]
    orphans = [m for m in modules if m != "__init__" and not layer_of(m)]
    assert not orphans, f"modules outside every layer of RANKS: {orphans}"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_graph() -> dict[str, set[str]]:
    """Module -> the vxdp modules it imports (a name imported from a package counts as the package,
    unless the name is a module of it)."""
    known = {module_name(p) for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        here = module_name(path)
        deps = set()
        for _, target in imports(path):
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != here:
                deps.add(target)
        graph[here] = deps
    return graph


def test_no_import_cycle():
    """Tarjan's strongly connected components over the whole import graph: each must be one module."""
    graph = module_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def _defines(tree: ast.Module) -> set[str]:
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                out |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out.add(node.target.id)
    return out


def test_one_import_path_per_name():
    """Every ``from vxdp.M import name`` (in src and tests) names the module that defines ``name`` (or
    a submodule of package M): no re-exports, so a reader finds each name where its import says."""
    files = sorted(SRC.rglob("*.py")) + sorted((ROOT / "tests").rglob("*.py"))
    trees = {module_name(p): ast.parse(p.read_text()) for p in SRC.rglob("*.py")}
    wrong = []
    for path in files:
        tree = ast.parse(path.read_text())
        in_src = SRC in path.parents
        pkg = module_name(path) if in_src and path.name == "__init__.py" else (
            module_name(path).rpartition(".")[0] if in_src else "")
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                parts = pkg.split(".")
                mod = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            elif node.module and (node.module == "vxdp" or node.module.startswith("vxdp.")):
                mod = node.module[5:]
            else:
                continue
            if mod not in trees:
                continue
            defined = _defines(trees[mod])
            for a in node.names:
                if a.name not in defined and f"{mod}.{a.name}".strip(".") not in trees:
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: {a.name} is not defined in vxdp.{mod}")
    assert not wrong, "\n".join(wrong)
