"""The layers of DESIGN.md, checked: a module never imports a layer above its own.

Read from the source with ast (imports inside functions count too), so a lazy
import cannot slip an upward dependency past the rule.
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
    "vhost_user": 5,
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
            if not there or there == here or here.startswith(there + ".") or there.startswith(here + "."):
                continue
            if RANKS[there] >= RANKS[here]:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {here} imports {target} ({there})")
    assert not wrong, "\n".join(wrong)


def test_every_module_has_a_layer():
    modules = [".".join(p.relative_to(SRC).with_suffix("").parts) for p in SRC.rglob("*.py")]
    orphans = [m for m in modules if m != "__init__" and not layer_of(m)]
    assert not orphans, f"modules outside every layer of RANKS: {orphans}"
