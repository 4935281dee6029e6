"""The XDP context and the sandbox: ctx fields, data_out, and faults instead of crashes."""

from __future__ import annotations

import pytest
from interp_asm import alu, exit_, ja, ld64, ldx, mov, packet_guard, prog, stx
from interp_asm import st as st_imm
from interp_oracle import run_both

from vxdp.bpf.isa import AluOp, Insn, PseudoSrc, XdpAction
from vxdp.bpf.mapspec import MapOrigin, MapSpec, MapType
from vxdp.engine.base import XdpMd
from vxdp.engine.interp.engine import InterpEngine
from vxdp.engine.interp.machine import InterpLoadError
from vxdp.engine.interp.xdp import PacketSizeError


@pytest.mark.privileged
def test_ctx_fields_match_kernel():
    """ingress_ifindex, rx_queue_index and data_end - data, written into the packet."""
    insns = prog(mov(9, 1), ldx(4, 6, 1, 12), ldx(4, 7, 1, 16), mov(8, imm=0),
                 packet_guard(32, 1), mov(5, 3), alu(AluOp.SUB, 5, 2),
                 stx(8, 2, 6, 0), stx(8, 2, 7, 8), stx(8, 2, 8, 16), stx(8, 2, 5, 24), mov(0, imm=3), exit_())
    both = run_both(insns, bytes(100))
    assert both.interp.action == both.kernel_action == XdpAction.TX
    assert both.interp.packet == both.kernel_packet
    assert int.from_bytes(both.interp.packet[24:32], "little") == 100


def test_out_of_bounds_packet_read_aborts(interp):
    insns = prog(ldx(4, 2, 1, 0), ldx(8, 0, 2, 60), exit_())  # no bounds check, 64-byte packet
    res = interp.run(interp.load_program("oob", insns), bytes(64))
    assert res.action == XdpAction.ABORTED
    assert "packet" in res.fault and "outside" in res.fault
    assert interp.run(interp.load_program("ok", prog(ldx(4, 2, 1, 0), ldx(8, 0, 2, 56), mov(0, imm=2), exit_())),
                      bytes(64)).action == XdpAction.PASS


def test_headroom_is_not_reachable(interp):
    insns = prog(ldx(4, 2, 1, 0), ldx(1, 0, 2, -1), exit_())
    assert "outside" in interp.run(interp.load_program("h", insns), bytes(64)).fault


@pytest.mark.parametrize("insns,reason", [
    (prog(st_imm(4, 1, 0, 5), exit_()), "read-only ctx"),
    (prog(ldx(8, 0, 1, 0), exit_()), "ctx access"),
    (prog(ldx(4, 0, 1, 20), exit_()), "egress_ifindex"),  # the kernel refuses it for plain XDP
    (prog(mov(2, imm=0), ldx(8, 0, 2, 0), exit_()), "not in any region"),
    (prog(ld64(2, 0xDEAD_0000_0000), stx(8, 2, 2, 0), exit_()), "not in any region"),
    (prog(stx(8, 10, 1, 0), exit_()), "stack frame 0"),
    (prog(Insn(0xFF), exit_()), "unknown opcode"),
    (prog(ja(-1)), "budget"),
    (prog(mov(0, imm=2)), "fell off the end"),
    (prog(Insn(0x05, 0, 0, 100, 0), exit_()), "outside the program"),
])
def test_program_errors_abort_with_reason(insns, reason):
    engine = InterpEngine(budget=10_000)
    res = engine.run(engine.load_program("bad", insns), bytes(64))
    assert res.action == XdpAction.ABORTED
    assert reason in res.fault
    assert engine.last_fault == res.fault
    # the engine is still usable
    assert engine.run(engine.load_program("ok", prog(mov(0, imm=2), exit_())), bytes(64)).action == 2
    assert engine.last_fault is None


def test_rodata_is_read_only_for_programs_and_data_is_not(interp):
    ro = interp.create_map(MapSpec(".rodata", MapType.ARRAY, 4, 8, 1, flags=0x80, origin=MapOrigin.RODATA,
                                   data=b"\x2a" + bytes(7)))
    rw = interp.create_map(MapSpec(".data", MapType.ARRAY, 4, 8, 1, origin=MapOrigin.DATA, data=bytes(8)))
    read = prog(Insn(0x18, 1, PseudoSrc.MAP_VALUE, 0, ro.handle), Insn(0, 0, 0, 0, 0), ldx(1, 0, 1, 0), exit_())
    assert interp.run(interp.load_program("r", read), bytes(64)).action == 0x2A
    write = prog(Insn(0x18, 1, PseudoSrc.MAP_VALUE, 0, ro.handle), Insn(0, 0, 0, 0, 4), st_imm(1, 1, 0, 1),
                 mov(0, imm=2), exit_())
    assert "read-only" in interp.run(interp.load_program("w", write), bytes(64)).fault
    with pytest.raises(OSError):
        ro.update(b"\0" * 4, bytes(8))  # frozen from user space too
    write_rw = prog(Insn(0x18, 1, PseudoSrc.MAP_VALUE, 0, rw.handle), Insn(0, 0, 0, 0, 4), st_imm(1, 1, 0, 7),
                    mov(0, imm=2), exit_())
    assert interp.run(interp.load_program("w2", write_rw), bytes(64)).action == 2
    assert rw.lookup(b"\0" * 4) == bytes(4) + b"\x07" + bytes(3)


def test_bad_packets_and_programs_raise_clear_errors(interp):
    p = interp.load_program("p", prog(mov(0, imm=2), exit_()))
    with pytest.raises(PacketSizeError):
        interp.run(p, bytes(13))
    with pytest.raises(PacketSizeError):
        interp.run(p, bytes(3521))
    assert interp.run(p, bytes(3520)).action == 2
    with pytest.raises(InterpLoadError):
        interp.load_program("cut", [Insn(0x18, 0, 0, 0, 1)])
    with pytest.raises(InterpLoadError):
        interp.load_program("nomap", prog(ld64(1, 77, PseudoSrc.MAP_FD), exit_()))


def test_ctx_argument_sets_ingress_fields(interp):
    insns = prog(ldx(4, 0, 1, 12), ldx(4, 3, 1, 16), alu(AluOp.LSH, 3, imm=8), alu(AluOp.OR, 0, 3), exit_())
    res = interp.run(interp.load_program("c", insns), bytes(64), ctx=XdpMd(ingress_ifindex=5, rx_queue_index=2))
    assert res.action == 5 | 2 << 8


def test_ctx_without_a_device_reads_the_loopback(interp):
    """Regression (found by the differential test's ctx strategy): ctx_in's ingress_ifindex 0 keeps the
    test run's default device, so the program reads 1 (the loopback), as the kernel gives, not 0."""
    insns = prog(ldx(4, 0, 1, 12), exit_())
    assert interp.run(interp.load_program("c", insns), bytes(64), ctx=XdpMd(ingress_ifindex=0)).action == 1


def test_ctx_metadata_comes_first_in_the_packet(interp):
    """ctx_in's data (meta_len): the first bytes given are metadata, data_meta..data; the run returns them too."""
    insns = prog(ldx(4, 2, 1, 0), ldx(4, 3, 1, 8), alu(AluOp.SUB, 2, src=3), mov(0, src=2), exit_())  # data - data_meta
    p = interp.load_program("m", insns)
    packet = bytes(range(8)) + bytes(60)
    res = interp.run(p, packet, ctx=XdpMd(meta_len=8))
    assert res.action == 8 and res.packet == packet


def test_speed_of_a_forty_instruction_program(interp):
    """Not a timing assertion: the run must finish and count all instructions; ns/packet is reported."""
    body = [alu(AluOp.ADD, 3, imm=1) for _ in range(32)]
    insns = prog(packet_guard(8, 1), mov(3, imm=0), *body, mov(0, imm=2), exit_())
    assert len(insns) == 42
    res = interp.run(interp.load_program("speed", insns), bytes(64), repeat=2000)
    assert res.action == 2 and res.fault is None
    print(f"\ninterp: {res.duration_ns:.0f} ns/packet for {len(insns)} instructions")
