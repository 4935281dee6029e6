"""The JIT's tests reuse the ISA corpus (`tests/engine/isa`) and the verifier's program generator
(`tests/engine/verifier`): their directories go on the import path, as pytest puts a test's own."""

from __future__ import annotations

import sys

from testpaths import ROOT

for sub in ("isa", "verifier"):
    path = str(ROOT / "tests" / "engine" / sub)
    if path not in sys.path:
        sys.path.insert(0, path)
