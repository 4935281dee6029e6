"""``vxdp prog run`` and ``vxdp prog disasm`` as a user runs them: the installed command, real objects."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from testpaths import SAMPLES_BUILD

from vxdp.packets import mix_protocol_counts

XDP1 = SAMPLES_BUILD / "xdp1.o"
XDP2 = SAMPLES_BUILD / "xdp2.o"


def vxdp(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vxdp.cli.main", *args], capture_output=True, text=True, check=check
    )


def run_json(*args: str) -> dict:
    return json.loads(vxdp("prog", "run", *args, "-j").stdout)


def counters(doc: dict, name: str = "rxcnt") -> dict[int, int]:
    (m,) = [m for m in doc["maps"] if m["name"] == name]
    out = {}
    for e in m["entries"]:
        value = int.from_bytes(bytes.fromhex(e["value"]), "little")
        if value:
            out[int.from_bytes(bytes.fromhex(e["key"]), "little")] = value
    return out


def strip_engine(doc: dict) -> dict:
    doc = dict(doc, engine=None)
    doc["runs"] = [dict(r, duration_ns=None) for r in doc["runs"]]
    return doc


@pytest.mark.privileged
def test_xdp1_counts_the_mix_on_both_engines(samples_built):
    docs = {engine: run_json(str(XDP1), "--engine", engine, "--mix", "64") for engine in ("interp", "kernel")}
    want = dict(mix_protocol_counts(64))
    for engine, doc in docs.items():
        assert doc["engine"] == engine
        assert counters(doc) == want
        assert {r["action"] for r in doc["runs"]} == {"XDP_DROP"}
    assert strip_engine(docs["interp"]) == strip_engine(docs["kernel"])


@pytest.mark.privileged
def test_xdp2_swaps_macs_and_transmits(samples_built):
    frame = bytes.fromhex("020000000002" "020000000001" "0800") + bytes(50)
    doc = run_json(str(XDP2), "--engine", "kernel", "--packet", frame.hex())
    (run,) = doc["runs"]
    assert run["action"] == "XDP_TX"
    out = bytes.fromhex(run["packet"])
    assert out[:6] == frame[6:12] and out[6:12] == frame[:6] and out[12:] == frame[12:]


def test_text_output_names_program_and_counts(samples_built):
    out = vxdp("prog", "run", str(XDP1), "--engine", "interp", "--mix", "16").stdout
    assert "program xdp_prog1 on engine interp: 16 packets" in out
    assert "XDP_DROP 16" in out
    assert "rxcnt" in out and "[6] = 4" in out  # 16 frames of the mix: 4 carry TCP


def test_errors_are_one_clear_line(tmp_path: Path, samples_built):
    bad = tmp_path / "bad.o"
    bad.write_bytes(b"not an elf file at all")
    r = vxdp("prog", "run", str(bad), "--mix", "1", check=False)
    assert r.returncode == 1 and r.stderr.startswith("vxdp: ") and "Traceback" not in r.stderr
    r = vxdp("prog", "run", str(tmp_path / "missing.o"), "--mix", "1", check=False)
    assert r.returncode == 1 and "no such file" in r.stderr
    r = vxdp("prog", "run", str(XDP1), check=False)
    assert r.returncode == 1 and "no packets" in r.stderr
    r = vxdp("prog", "run", str(XDP1), "--packet", "zz", check=False)
    assert r.returncode == 1 and "not hex" in r.stderr
    r = vxdp("prog", "run", str(XDP1), "--prog", "nope", "--mix", "1", check=False)
    assert r.returncode == 1 and "no program named 'nope'" in r.stderr


def test_disasm_reads_like_bpftool(samples_built):
    out = vxdp("prog", "disasm", str(XDP1)).stdout
    assert out.startswith("xdp_prog1:  section xdp")
    assert "exit" in out and "; map rxcnt" in out
    doc = json.loads(vxdp("prog", "disasm", str(XDP1), "-j").stdout)
    assert doc[0]["name"] == "xdp_prog1" and doc[0]["insns"][-1]["text"] == "exit"
