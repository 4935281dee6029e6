"""``vxdp bench engines`` writes its figures with their environment to JSON and Markdown."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from testpaths import SAMPLES_BUILD


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
    assert rows == {(p, e) for p in ("xdp_prog1", "xdp_prog2") for e in ("interp", "kernel")}
    assert all(row["ns_per_packet"] > 0 for row in doc["results"])
    md = (tmp_path / "engines.md").read_text()
    assert "| xdp_prog1 | interp |" in md and doc["environment"]["kernel"] in md
