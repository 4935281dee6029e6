"""``vxdp bench engines`` writes its figures with their environment to JSON and Markdown."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from testpaths import SAMPLES_BUILD

from vxdp.engine import ENGINES


@pytest.mark.privileged
@pytest.mark.slow
def test_bench_engines_writes_json_and_markdown(tmp_path, samples_built):
    r = subprocess.run(
        [sys.executable, "-m", "vxdp.cli.main", "bench", "engines", "--quick",
         "--samples", str(SAMPLES_BUILD), "--out", str(tmp_path), "-j"],
        capture_output=True, text=True, check=True,
    )
    doc = json.loads(r.stdout)
    assert doc == json.loads((tmp_path / "engines.json").read_text())
    assert {"kernel", "cpu", "python"} <= doc["environment"].keys()
    rows = {(row["program"], row["engine"]) for row in doc["results"]}
    assert rows == {(p, e) for p in ("xdp_prog1", "xdp_prog2", "xdp_flow") for e in ENGINES}
    assert all(row["ns_per_packet"] > 0 and row["load_ms"] > 0 for row in doc["results"])
    # every engine beside the kernel and the interpreter, per program
    ratio = {(row["program"], row["engine"]): row for row in doc["ratios"]}
    assert ratio[("xdp_flow", "interp")]["vs_kernel"] > 0 and ratio[("xdp_flow", "kernel")]["vs_kernel"] is None
    md = (tmp_path / "engines.md").read_text()
    assert "| xdp_prog1 | interp |" in md and doc["environment"]["kernel"] in md


def test_bench_engines_refuses_an_unknown_engine(tmp_path):
    r = subprocess.run([sys.executable, "-m", "vxdp.cli.main", "bench", "engines", "--engine", "ebpf",
                        "--out", str(tmp_path)], check=False, capture_output=True, text=True)
    assert r.returncode == 2 and "invalid choice: 'ebpf'" in r.stderr and not list(tmp_path.iterdir())
