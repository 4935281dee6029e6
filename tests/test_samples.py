"""The sample programs and the test corpus stay valid for the host kernel.

The corpus feeds the differential tests (our engines against the kernel's
BPF_PROG_TEST_RUN), so it is only useful if every object builds and the kernel
verifier accepts every program in it. These tests build with `make samples`,
load each object with bpftool (libbpf, so `.values`-initialised prog arrays and
global data are handled as in production loaders) into a fresh bpffs pin
directory, and run xdp1/xdp2/tail_calls once to check they do what they claim.

libbpf 1.x refuses legacy `SEC("maps")` definitions, so objects that have them
are checked through their BTF twin: the same source built with -DVXDP_BTF_TWIN.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import uuid
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
BUILD = SAMPLES / "build"
BPFFS = Path("/sys/fs/bpf")
EM_BPF = 247
BPF_CFLAGS = ["-O2", "-g", "-target", "bpf", "-Wall", "-Wno-unused-value"]

SOURCES = sorted([*SAMPLES.glob("*.c"), *SAMPLES.glob("corpus/*.c")])
SOURCE_IDS = [str(p.relative_to(SAMPLES)) for p in SOURCES]

pytestmark = pytest.mark.privileged


def object_for(source: Path) -> Path:
    return BUILD / source.relative_to(SAMPLES).with_suffix(".o")


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """Callers assert on the return code, with the output in the message."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, **kw)


@pytest.fixture(scope="module")
def built() -> None:
    """`make samples` once per module; every test below relies on its output."""
    proc = run(["make", "-C", str(ROOT), "samples"])
    assert proc.returncode == 0, f"make samples failed:\n{proc.stdout}\n{proc.stderr}"
    if run(["mountpoint", "-q", str(BPFFS)]).returncode != 0:
        assert run(["mount", "-t", "bpf", "bpf", str(BPFFS)]).returncode == 0


@pytest.fixture
def pin_dir():
    """A fresh bpffs directory, removed (with everything pinned in it) afterwards."""
    path = BPFFS / f"vxdp_test_samples_{uuid.uuid4().hex[:12]}"
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def elf_info(obj: Path) -> tuple[int, set[str], set[str]]:
    """(e_machine, section names, names of the programs libbpf will load)."""
    with obj.open("rb") as f:
        elf = ELFFile(f)
        sections = {s.name for s in elf.iter_sections()}
        symtab = elf.get_section_by_name(".symtab")
        progs = set()
        for sym in symtab.iter_symbols():
            if sym["st_info"]["type"] != "STT_FUNC" or sym["st_info"]["bind"] != "STB_GLOBAL":
                continue
            shndx = sym["st_shndx"]
            if isinstance(shndx, int) and elf.get_section(shndx).name.startswith("xdp"):
                progs.add(sym.name)
        return elf["e_machine"], sections, progs


def loadable_object(source: Path, tmp_path: Path) -> Path:
    """The object itself, or its BTF twin when it has a legacy "maps" section."""
    obj = object_for(source)
    if "maps" not in elf_info(obj)[1]:
        return obj
    twin = tmp_path / (source.stem + "_btf_twin.o")
    cmd = ["clang", *BPF_CFLAGS, f"-I/usr/include/{run(['uname', '-m']).stdout.strip()}-linux-gnu",
           f"-I{SAMPLES / 'include'}", "-DVXDP_BTF_TWIN", "-c", str(source), "-o", str(twin)]
    proc = run(cmd)
    assert proc.returncode == 0, f"BTF twin of {source.name} failed to build:\n{proc.stderr}"
    assert "maps" not in elf_info(twin)[1]
    return twin


def loadall(obj: Path, pin: Path) -> None:
    proc = run(["bpftool", "prog", "loadall", str(obj), str(pin), "type", "xdp", "pinmaps", str(pin / "maps")])
    assert proc.returncode == 0, f"bpftool rejected {obj.name}:\n{proc.stderr[-4000:]}"


def prog_run(prog: Path, packet: bytes, tmp_path: Path) -> tuple[int, bytes]:
    data_in, data_out = tmp_path / "in.bin", tmp_path / "out.bin"
    data_in.write_bytes(packet)
    proc = run(["bpftool", "-j", "prog", "run", "pinned", str(prog), "data_in", str(data_in),
                "data_out", str(data_out), "repeat", "1"])
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["retval"], data_out.read_bytes()


def map_values(map_path: Path) -> dict[int, int]:
    proc = run(["bpftool", "-j", "map", "dump", "pinned", str(map_path)])
    assert proc.returncode == 0, proc.stderr
    # -j prints raw hex bytes, plus the BTF-decoded entry under "formatted"
    return {e["formatted"]["key"]: e["formatted"]["value"] for e in json.loads(proc.stdout)}


DST, SRC = bytes.fromhex("020000000002"), bytes.fromhex("020000000001")


def udp4_frame(ttl: int = 64) -> bytes:
    udp = struct.pack("!HHHH", 1234, 53, 12, 0) + b"abcd"
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, ttl, 17, 0,
                     bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2]))
    return DST + SRC + b"\x08\x00" + ip + udp


def test_every_source_has_a_bpf_object(built):
    assert len(SOURCES) >= 10, "the corpus shrank"
    for source in SOURCES:
        obj = object_for(source)
        assert obj.is_file(), f"{source} was not built to {obj}"
        machine, _, progs = elf_info(obj)
        assert machine == "EM_BPF" or machine == EM_BPF, f"{obj} is not a BPF object"
        assert progs, f"{obj} has no XDP program"


@pytest.mark.parametrize("source", SOURCES, ids=SOURCE_IDS)
def test_object_loads_in_kernel(built, source, pin_dir, tmp_path):
    obj = loadable_object(source, tmp_path)
    loadall(obj, pin_dir)
    pinned = {p.name for p in pin_dir.iterdir() if p.name != "maps"}
    assert pinned == elf_info(object_for(source))[2]


def test_xdp1_counts_protocol_and_drops(built, pin_dir, tmp_path):
    loadall(object_for(SAMPLES / "xdp1.c"), pin_dir)
    retval, _ = prog_run(pin_dir / "xdp_prog1", udp4_frame(), tmp_path)
    assert retval == 1  # XDP_DROP
    retval, _ = prog_run(pin_dir / "xdp_prog1", DST + SRC + b"\x08\x06" + bytes(28), tmp_path)
    assert retval == 1
    counts = map_values(pin_dir / "maps" / "rxcnt")
    assert counts[17] == 1 and sum(counts.values()) == 1  # ARP counted nothing


def test_xdp2_swaps_macs_and_transmits(built, pin_dir, tmp_path):
    loadall(object_for(SAMPLES / "xdp2.c"), pin_dir)
    frame = udp4_frame()
    retval, out = prog_run(pin_dir / "xdp_prog2", frame, tmp_path)
    assert retval == 3  # XDP_TX
    assert out == SRC + DST + frame[12:]
    assert map_values(pin_dir / "maps" / "rxcnt")[17] == 1


def test_tail_calls_static_values_fill_the_prog_array(built, pin_dir, tmp_path):
    loadall(object_for(SAMPLES / "corpus" / "tail_calls.c"), pin_dir)
    # slot 0 (handle_ipv4): UDP -> TX; slot 1 empty: IPv6 falls through -> PASS
    assert prog_run(pin_dir / "xdp_entry", udp4_frame(), tmp_path)[0] == 3
    assert prog_run(pin_dir / "xdp_entry", udp4_frame(ttl=1), tmp_path)[0] == 1
    assert prog_run(pin_dir / "xdp_entry", DST + SRC + b"\x86\xdd" + bytes(40), tmp_path)[0] == 2
    assert map_values(pin_dir / "maps" / "hops") == {0: 2, 1: 0, 2: 0, 3: 1}
