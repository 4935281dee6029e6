"""``vxdp bench seed --quick`` end to end: every cell of the RFC's tables measured and written (JSON,
Markdown, chart), the regression check with offload support off and on. Functional: never a rate."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vxdp.bench.seed import CASES, COLUMNS, PROGRAMS, REGRESSION

pytestmark = [pytest.mark.privileged, pytest.mark.slow]


def _vxdp(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vxdp.cli.main", *args], check=False, capture_output=True,
                          text=True, timeout=timeout)


def test_bench_seed_quick_measures_every_cell_and_writes_three_files(tmp_path):
    r = _vxdp("bench", "seed", "--quick", "--out", str(tmp_path), "-j")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    doc = json.loads(r.stdout)
    assert doc == json.loads((tmp_path / "seed.json").read_text())
    assert doc["command"].startswith("vxdp bench seed --quick")
    env = doc["environment"]
    assert {"kernel", "cpu", "cpus", "python", "placement", "engines", "versions"} <= env.keys()
    assert env["versions"]["iperf3"] and env["versions"]["sockperf"] and env["versions"]["numba"]

    cells = {(row["case"], row["program"], row["column"]): row for row in doc["results"]}
    assert set(cells) == {(c, p, col) for c in CASES for p in PROGRAMS for col in COLUMNS}
    for key, row in cells.items():
        assert row["mpps"] > 0 and row["runs"] and all(v > 0 for v in row["runs"]), (key, row)
        assert row["offered_mpps"] > 0, (key, row)
    assert {(s["case"], s["program"]) for s in doc["summary"]} == {(c, p) for c in CASES for p in PROGRAMS}
    for s in doc["summary"]:
        assert s["offload_kernel_x"] > 0 and s["offload_kernel_of_limit"] > 0 and s["rfc_x"] > 0, s

    tests = {row["test"]: row for row in doc["regression"]}
    assert set(tests) == {t for t, _, _ in REGRESSION}
    for test, row in tests.items():
        assert row["off"] > 0 and row["on"] > 0 and row["delta_pct"] is not None, (test, row)
        assert row["off_runs"] and row["on_runs"], (test, row)

    md = (tmp_path / "seed.md").read_text()
    assert "## Case 1" in md and "## Case 2" in md and "## Regression" in md
    assert "| xdp1 (DROP) | 2.46 | 12.9 |" in md and "| xdp2 (TX) | 1.5 | 7.26 |" in md  # the RFC's own figures
    assert env["kernel"] in md and "](seed.png)" in md and "--quick" in md
    png = (tmp_path / "seed.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def test_bench_seed_refuses_bad_arguments_before_running(tmp_path):
    not_dir = tmp_path / "file"
    not_dir.write_text("x")
    r = _vxdp("bench", "seed", "--quick", "--out", str(not_dir), timeout=60)
    assert r.returncode != 0 and "not a directory" in r.stderr
    r = _vxdp("bench", "seed", "--quick", "--runs", "0", "--out", str(tmp_path), timeout=60)
    assert r.returncode != 0 and "runs must be at least 1" in r.stderr
    assert not (tmp_path / "seed.json").exists()
