"""KernelProgram and KernelBtf against the real verifier: loads, refusals with logs, test runs, info."""

from __future__ import annotations

import errno
import os
import struct

import pytest
from kernel_asm import count_and_return_insns, marked_frame, ret_insns

from vxdp.bpf.isa import EXIT, Insn, XdpAction
from vxdp.bpf.kernel import syscall
from vxdp.bpf.kernel.btf import KernelBtf, KernelBtfError
from vxdp.bpf.kernel.live_frames import xdp_md
from vxdp.bpf.kernel.maps import KernelMap
from vxdp.bpf.kernel.objects import prog_ids
from vxdp.bpf.kernel.prog import KernelProgram, VerifierError, enable_stats
from vxdp.bpf.kernel.syscall import BpfError, Cmd
from vxdp.bpf.mapspec import MapSpec, MapType
from vxdp.bpf.obj import FuncInfo

pytestmark = pytest.mark.privileged

# Write 0xAA into the first byte of the packet and return TX; DROP if the packet is empty.
MARK_FIRST_BYTE = [
    Insn(0x61, 2, 1, 0, 0),  # r2 = ctx->data
    Insn(0x61, 3, 1, 4, 0),  # r3 = ctx->data_end
    Insn(0xBF, 4, 2),  # r4 = r2
    Insn(0x07, 4, 0, 0, 1),  # r4 += 1
    Insn(0xB7, 0, 0, 0, XdpAction.DROP),  # r0 = DROP
    Insn(0x2D, 4, 3, 2, 0),  # if r4 > r3 goto exit
    Insn(0x72, 2, 0, 0, 0xAA),  # *(u8 *)(r2 + 0) = 0xaa
    Insn(0xB7, 0, 0, 0, XdpAction.TX),  # r0 = TX
    Insn(EXIT),
]

# Reads the packet without a bounds check: the verifier must refuse it.
UNCHECKED_READ = [Insn(0x61, 2, 1, 0, 0), Insn(0x71, 0, 2, 0, 0), Insn(EXIT)]


def btf_blob(types: bytes, strings: bytes) -> bytes:
    hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return hdr + types + strings


BTF_INT = struct.pack("<IIII", 1, 1 << 24, 4, (1 << 24) | 32)  # [1] INT "int" size 4, signed, 32 bits
BTF_STRINGS = b"\0int\0xdp_main\0"
BTF_FUNC = (
    struct.pack("<III", 0, 13 << 24, 1)  # [2] FUNC_PROTO returning [1], no params
    + struct.pack("<III", 5, (12 << 24) | 1, 2)  # [3] FUNC "xdp_main", global, type [2]
)


def test_load_and_run_returns_the_action():
    with KernelProgram.load(ret_insns(XdpAction.PASS), name="ret_pass") as p:
        r = p.test_run(bytes(64))
        assert r.retval == XdpAction.PASS
        assert r.data_out == bytes(64)


def test_run_modifies_the_packet():
    with KernelProgram.load(MARK_FIRST_BYTE, name="mark") as p:
        r = p.test_run(bytes(range(64)))
        assert r.retval == XdpAction.TX
        assert r.data_out == b"\xaa" + bytes(range(1, 64))


def test_repeat_gives_a_duration_and_stats_count_runs():
    with KernelProgram.load(MARK_FIRST_BYTE, name="mark") as p, enable_stats():
        r = p.test_run(bytes(64), repeat=1000)
        assert r.retval == XdpAction.TX
        assert r.duration_ns > 0
        info = p.info()
        assert info.run_cnt == 1000
        assert info.run_time_ns > 0


def test_ctx_in_and_out():
    with KernelProgram.load(MARK_FIRST_BYTE, name="mark") as p:
        r = p.test_run(bytes(64), ctx_in=xdp_md(64, ifindex=1))
        assert r.retval == XdpAction.TX
        assert r.ctx_out is not None and len(r.ctx_out) == 24
        data, data_end, _meta, ifindex, _q, _eg = struct.unpack("<6I", r.ctx_out)
        assert (data_end - data, ifindex) == (64, 1)
        # a context whose data_end cuts the packet to nothing makes the program drop
        r = p.test_run(bytes(64), ctx_in=bytes(24))
        assert r.retval == XdpAction.DROP


def test_too_short_packet_is_refused_by_the_kernel():
    with KernelProgram.load(ret_insns(2), name="ret_pass") as p:
        with pytest.raises(BpfError) as e:
            p.test_run(b"")
        assert e.value.errno == errno.EINVAL and e.value.cmd == Cmd.PROG_TEST_RUN


def test_verifier_refusal_carries_the_log():
    with pytest.raises(VerifierError) as e:
        KernelProgram.load(UNCHECKED_READ, name="unchecked")
    err = e.value
    assert err.errno == errno.EACCES and err.cmd == Cmd.PROG_LOAD
    assert "invalid access to packet" in err.log
    assert "invalid access to packet" in str(err) and "unchecked" in str(err)
    assert isinstance(err, OSError)


def test_log_level_keeps_the_log_of_a_good_load():
    with KernelProgram.load(ret_insns(1), name="logged", log_level=2) as p:
        assert "processed 2 insns" in p.verifier_log
    with KernelProgram.load(ret_insns(1), name="quiet") as p:
        assert p.verifier_log == ""


def test_info_names_the_program_and_its_maps():
    with KernelMap.create(MapSpec("cnt", MapType.ARRAY, 4, 8, 1)) as m, \
            KernelProgram.load(count_and_return_insns(m.fd, 2), name="counter-prog") as p:
        i = p.info()
        assert i.name == "counter_prog" and i.type == 6
        assert i.map_ids == (m.info().id,)
        assert i.id in prog_ids()
        assert len(i.tag) == 16 and i.xlated_prog_len > 0 and i.jited_prog_len > 0
        assert i.gpl_compatible
        # the program counts marked frames into the map
        p.test_run(marked_frame(), repeat=5)
        assert struct.unpack("<Q", m.lookup(bytes(4)))[0] == 5


def test_close_releases_fd_and_program():
    p = KernelProgram.load(ret_insns(2), name="short_lived")
    fd, pid = p.fd, p.info().id
    assert os.path.exists(f"/proc/self/fd/{fd}")
    p.close()
    p.close()
    assert not os.path.exists(f"/proc/self/fd/{fd}")
    assert pid not in prog_ids()


def test_bad_input_is_caught_before_the_kernel():
    with pytest.raises(ValueError, match="multiple of 8"):
        KernelProgram.load(b"\x95\0\0\0", name="short")
    with pytest.raises(ValueError):
        KernelProgram.load([], name="empty")


def test_every_call_goes_through_sys_bpf(monkeypatch):
    seen: list[int] = []
    real = syscall.sys_bpf

    def recording(cmd, attr, what=""):
        seen.append(int(cmd))
        return real(cmd, attr, what)

    monkeypatch.setattr(syscall, "sys_bpf", recording)
    with KernelProgram.load(ret_insns(2), name="seen") as p:
        p.test_run(bytes(64))
    assert seen == [Cmd.PROG_LOAD, Cmd.PROG_TEST_RUN]


def test_btf_load_and_func_info():
    with KernelBtf.load(btf_blob(BTF_INT + BTF_FUNC, BTF_STRINGS)) as btf:
        assert btf.info().id > 0
        with KernelProgram.load(ret_insns(2), name="with_btf", btf_fd=btf.fd,
                                func_info=[FuncInfo(0, 3)]) as p:
            i = p.info()
            assert i.btf_id == btf.info().id and i.nr_func_info == 1
        with pytest.raises(VerifierError) as e:  # func_info must name a FUNC
            KernelProgram.load(ret_insns(2), name="bad_fi", btf_fd=btf.fd, func_info=[FuncInfo(0, 1)])
        assert "invalid type id 1 in func info" in e.value.log


def test_corrupt_btf_raises_with_the_kernels_log():
    bad_int = struct.pack("<IIII", 1, 1 << 24, 4, (1 << 24) | 64)  # 64 bits in a 4-byte int
    with pytest.raises(KernelBtfError) as e:
        KernelBtf.load(btf_blob(bad_int, b"\0int\0"))
    assert e.value.errno == errno.EINVAL and e.value.cmd == Cmd.BTF_LOAD
    assert "nr_bits exceeds type_size" in e.value.log
    with pytest.raises(KernelBtfError) as e:
        KernelBtf.load(b"\x00" * 24)  # bad magic
    assert e.value.errno == errno.EINVAL


def test_syscall_number_per_machine():
    assert syscall.bpf_syscall_number("x86_64") == 321
    assert syscall.bpf_syscall_number("aarch64") == 280
    with pytest.raises(OSError) as e:
        syscall.bpf_syscall_number("pdp11")
    assert e.value.errno == errno.ENOSYS and "pdp11" in str(e.value)


def test_none_func_info_means_none():
    with KernelProgram.load(ret_insns(2), name="no_fi", func_info=None, line_info=None) as p:
        assert p.info().nr_func_info == 0


def test_one_pass_load_keeps_the_log_tail_and_says_how_long_it_was():
    """``log_size``: one verifier pass. A log too small rotates (keeps its tail, where the reason
    is), the kernel reports the whole length, and answers ENOSPC in place of the verifier's EACCES."""
    insns = [Insn(0xB7, 1, 0, 0, i) for i in range(300)] + [Insn(EXIT)]  # r1 = i ...; exit with r0 unset
    with pytest.raises(VerifierError) as cut:
        KernelProgram.load(insns, name="onepass", log_size=1024)
    e = cut.value
    assert e.errno == errno.ENOSPC and e.log_size == 1024 and e.log_true_size > 1024
    assert "R0 !read_ok" in e.log and len(e.log) < 1024
    with pytest.raises(VerifierError) as whole:
        KernelProgram.load(insns, name="onepass", log_size=e.log_true_size)
    assert whole.value.errno == errno.EACCES and whole.value.log.endswith(e.log[-200:])
