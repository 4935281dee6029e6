"""Benchmark reports: the Markdown table says what was measured, and `-` for what was not."""

from __future__ import annotations

from vxdp.bench.report import markdown_table


def test_a_figure_not_measured_is_a_dash_never_none():
    table = markdown_table([("program", "program"), ("mpps", "Mpps")],
                           [{"program": "xdp_prog1", "mpps": None}, {"program": "xdp_prog2", "mpps": 12.345}])
    assert table.splitlines()[2:] == ["| xdp_prog1 | - |", "| xdp_prog2 | 12.3 |"]
