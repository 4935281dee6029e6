"""docs/architecture.md stays true: every file its walks name exists, and each is named once."""

from __future__ import annotations

import re
from collections import Counter

from testpaths import ROOT

DOC = ROOT / "docs" / "architecture.md"
PATH = re.compile(r"`(src/vxdp/[\w/]+\.py)`")
MODULE = re.compile(r"`(vxdp(?:\.\w+)+)`")


def test_every_file_named_exists_and_is_named_once():
    text = DOC.read_text()
    named = PATH.findall(text)
    assert len(named) >= 30, "the walks name the files they cross"
    missing = [p for p in named if not (ROOT / p).is_file()]
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"
    twice = [p for p, n in Counter(named).items() if n > 1]
    assert not twice, f"docs/architecture.md names these files more than once: {twice}"


def test_every_package_or_module_named_exists():
    for name in set(MODULE.findall(DOC.read_text())):
        rel = ROOT / "src" / name.replace(".", "/")
        assert rel.with_suffix(".py").is_file() or (rel / "__init__.py").is_file(), f"{name} does not exist"
