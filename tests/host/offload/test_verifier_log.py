"""The verifier's log goes back to the guest in the guest program's instruction numbers.

The host verifies a longer copy (the action-counting epilogue sits after the
main function), so without the mapping a refusal in a subprogram names slots
the guest's program does not have.
"""

from __future__ import annotations

import pytest

from vxdp.bpf.isa import EXIT, Insn
from vxdp.host.offload.errors import OffloadError
from vxdp.host.offload.service import OffloadService
from vxdp.host.offload.verifier_log import EpilogueMap, guest_log

pytestmark = pytest.mark.privileged

M = EpilogueMap(start=3, length=16)  # a main function of 3 slots; guest slot 3 is host slot 19


def test_epilogue_map():
    assert [M.guest(i) for i in (0, 2, 3, 18, 19, 25)] == [0, 2, None, None, 3, 9]
    assert [M.label(i) for i in (2, 3, 18, 19)] == ["2", "E0", "E15", "3"]


def test_every_place_the_verifier_prints_an_index():
    host = "\n".join([  # noqa: FLY002 -- one log line an element, as in the expected list below
        "func#0 @0", "func#1 @19",
        "0: (85) call pc+18",
        "2: (05) goto pc+0",
        "3: (bf) r6 = r0",
        "20: (55) if r2 != 0x0 goto pc+1 22: R0=2 R10=fp0",
        "21: (05) goto pc-2",
        "from 20 to 22: R0=2",
        "last_idx 21 first_idx 19",
        "regs=4 stack=0 before 20: (55) if r2 != 0x0 goto pc+1",
        "jump out of range from insn 21 to 40",
        "processed 19 insns (limit 1000000)",
        "invalid access to packet, off=0 size=1, R2(id=0,off=0,r=0)",
    ]) + "\n"
    got = guest_log(host, M).splitlines()
    assert got[0].startswith("; vxdp: instruction numbers are the guest program's; E0..E15")
    assert got[1:] == [
        "func#0 @0", "func#1 @3",
        "0: (85) call pc+2",
        "2: (95) exit",
        "E0: (bf) r6 = r0",
        "4: (55) if r2 != 0x0 goto pc+1 6: R0=2 R10=fp0",
        "5: (05) goto pc-2",
        "from 4 to 6: R0=2",
        "last_idx 5 first_idx 3",
        "regs=4 stack=0 before 4: (55) if r2 != 0x0 goto pc+1",
        "jump out of range from insn 5 to 24",
        "processed 19 insns (limit 1000000)",
        "invalid access to packet, off=0 size=1, R2(id=0,off=0,r=0)",
    ]


def test_without_an_epilogue_the_log_is_unchanged():
    assert guest_log("3: (95) exit\n", EpilogueMap(5, 0)) == "3: (95) exit\n"


def _refusal(insns: list[Insn]) -> OffloadError:
    s = OffloadService()
    try:
        s.add_device("vlog0", "lo")
        with pytest.raises(OffloadError) as e:
            s.prog_load("vlog0", insns, name="bad")
        return e.value
    finally:
        s.close()


def test_a_refusal_in_a_subprogram_names_the_guests_slots():
    e = _refusal([
        Insn(0x85, 0, 1, 0, 2),  # 0: call pc+2 (the subprogram at 3)
        Insn(0xB7, 0, 0, 0, 2),  # 1: r0 = XDP_PASS
        Insn(EXIT),  # 2
        Insn(0x61, 2, 1, 0, 0),  # 3: r2 = ctx->data
        Insn(0x71, 0, 2, 0, 0),  # 4: r0 = *(u8 *)(r2 + 0), no bounds check
        Insn(EXIT),  # 5
    ])
    assert e.rule == "verifier" and "outside of the packet" in str(e)
    lines = e.log.splitlines()
    assert "0: (85) call pc+2" in lines
    assert "4: (71) r0 = *(u8 *)(r2 +0)" in lines
    assert not any(ln.startswith(("19:", "20:")) for ln in lines)  # the host copy's numbers


def test_a_refusal_in_the_epilogue_shows_the_guests_exit():
    e = _refusal([Insn(EXIT)])  # r0 never set: the epilogue's first read of it fails
    lines = e.log.splitlines()
    assert "0: (95) exit" in lines
    assert any(ln.startswith("E0: (bf) r6 = r0") for ln in lines)
    assert "R0 !read_ok" in e.log
