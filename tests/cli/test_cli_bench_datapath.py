"""``vxdp bench datapath --quick`` runs every path (ours, testpmd in place of each half, testpmd to
testpmd, TCP both ways) and writes each figure with its environment. Functional: never a rate."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.privileged, pytest.mark.slow]

MPPS_COLUMNS = ("ours", "pmd_driver", "pmd_backend", "pmd_both")


def test_bench_datapath_quick_writes_every_row(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "vxdp.cli.main", "bench", "datapath", "--quick", "--out", str(tmp_path), "-j"],
        check=False, capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    doc = json.loads(r.stdout)
    assert doc == json.loads((tmp_path / "datapath.json").read_text())
    assert {"kernel", "cpu", "cpus", "python", "placement"} <= doc["environment"].keys()
    assert doc["command"].startswith("vxdp bench datapath --quick")
    rows = {row["path"]: row for row in doc["results"]}
    assert set(rows) == {"port → guest, 64 B", "guest → port, 64 B", "TCP traffic → guest", "TCP guest → traffic"}
    for path in ("port → guest, 64 B", "guest → port, 64 B"):
        assert rows[path]["unit"] == "Mpps"
        for col in MPPS_COLUMNS:
            assert rows[path][col] > 0, (path, col, rows[path])
    for path in ("TCP traffic → guest", "TCP guest → traffic"):
        assert rows[path]["unit"] == "Gbps" and rows[path]["ours"] > 0 and rows[path]["veth"] > 0
    # the generator's offered load is recorded beside what the receiver counted
    assert doc["samples"]["rx"]["ours"]["offered_mpps"] > 0
    md = (tmp_path / "datapath.md").read_text()
    assert "| port → guest, 64 B | Mpps |" in md and doc["environment"]["kernel"] in md
