"""The seed benchmark's arithmetic and files, from a made-up run: ratios, the RFC's table shape, the chart."""

from __future__ import annotations

import pytest

from vxdp.bench import seed, seed_report

ENV = {"date": "2026-12-02 12:00:00 UTC", "kernel": "6.18.0-test", "cpu": "TestCPU", "cpus": 2, "python": "3.11.7",
       "placement": "here", "versions": {"numba": "0.68", "llvmlite": "0.50", "ip": "ip", "iperf3": "iperf 3.12",
                                         "sockperf": "sockperf 3.7"}}
MPPS = {seed.DRIVER_JIT: 0.5, seed.GUEST_KERNEL: 0.4, seed.OFFLOAD_KERNEL: 4.0, seed.OFFLOAD_JIT: 1.0, seed.LIMIT: 5.0}


def _rows(cases=seed.CASES) -> list[dict]:
    return [{"case": c, "program": p, "column": col, "mpps": v, "runs": [v], "spread_pct": 0.0, "offered_mpps": 6.0}
            for c in cases for p in seed.PROGRAMS for col, v in MPPS.items()]


def _doc(rows: list[dict]) -> dict:
    return {"environment": ENV, "results": rows, "summary": seed.summary(rows),
            "plan": {"runs": 3, "seconds": 3.0, "warm_seconds": 1.0, "regression_seconds": 4, "frame_bytes": 64,
                     "quick": False},
            "regression": [{"test": "TCP_STREAM", "unit": "Gbps", "off": 2.0, "on": 2.02, "delta_pct": 1.0}]}


def test_summary_divides_offload_by_the_faster_non_offload_column_and_by_the_limit():
    rows = _rows()
    (first, *_) = seed.summary(rows)
    assert first["case"] == 1 and first["program"] == "xdp1"
    assert first["non_offload_best"] == 0.5  # the driver's JIT beat the guest kernel here
    assert first["offload_kernel_x"] == 8.0 and first["offload_jit_x"] == 2.0
    assert first["offload_kernel_of_limit"] == 0.8
    assert first["rfc_x"] == pytest.approx(12.90 / 2.46, abs=0.01)


def test_summary_leaves_a_ratio_out_when_its_column_was_not_measured():
    rows = [r for r in _rows(cases=(2,)) if r["column"] != seed.LIMIT]
    summ = seed.summary(rows)
    assert {(s["case"], s["program"]) for s in summ} == {(2, "xdp1"), (2, "xdp2")}
    assert all(s["offload_kernel_of_limit"] is None and s["offload_kernel_x"] == 8.0 for s in summ)


def test_markdown_has_the_rfc_shape_with_its_figures_beside_ours():
    md = seed_report.to_markdown(_doc(_rows()), "vxdp bench seed")
    assert "## Case 1" in md and "## Case 2" in md and "## Regression" in md
    assert "| xdp1 (DROP) | 2.46 | 12.9 | 5.24 | 0.5 ±0% | 0.4 ±0% | 4 ±0% | 1 ±0% | 5 ±0% | 8 | 80% |" in md
    assert "| xdp2 (TX) | 1.1 | 0.99 | 0.9 |" in md  # Case 2: the RFC's offload lost there
    assert "| TCP_STREAM | Gbps | 2 | - | 2.02 | - | 1 |" in md
    assert "`vxdp bench seed` on 2026-12-02" in md and "6.18.0-test" in md and "--quick" not in md


def test_chart_is_a_png_with_a_panel_per_measured_case(tmp_path):
    path = seed_report.write_chart(_doc(_rows()), tmp_path / "seed.png")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    one = seed_report.write_chart(_doc(_rows(cases=(1,))), tmp_path / "one.png")
    def width(png: bytes) -> int:  # the IHDR width
        return int.from_bytes(png[16:20], "big")

    assert width(data) > width(one.read_bytes())  # two panels side by side are wider than one


@pytest.mark.parametrize(("kw", "message"), [
    ({"runs": 0}, "runs must be at least 1"),
    ({"seconds": -1.0}, "seconds must be in"),
    ({"cases": (3,)}, "case 3"),
    ({"programs": ("xdp9",)}, "program 'xdp9'"),
])
def test_plan_refuses_what_cannot_run(kw, message):
    with pytest.raises(ValueError, match=message):
        seed.plan("samples/build", quick=True, **kw)


def test_quick_plan_is_short_and_the_estimate_counts_every_step():
    quick, full = seed.plan("s", quick=True), seed.plan("s", quick=False)
    assert quick.runs == 1 and quick.seconds < full.seconds and full.runs == 3
    assert seed.estimate_seconds(quick) < seed.estimate_seconds(full)
    assert seed.estimate_seconds(seed.plan("s", quick=False, regression=False)) < seed.estimate_seconds(full)
