"""The helpers an XDP program may call in the interpreter, by `Helper` id.

Each helper is ``f(machine, r1, r2, r3, r4, r5) -> int`` (the machine masks the
result to 64 bits, so a negative errno comes out as the kernel's sign-extended
``-E...``). Pointer arguments are checked through the machine's memory, so a
helper handed a bad pointer faults like a bad load would. ``tail_call`` and
``loop`` are not here: they change control flow, so the machine implements them.

``csum_diff`` follows net/core/filter.c since 6.12 ("bpf_csum_diff: optimize and
homogenize for all archs"): a ``csum_partial`` of each side combined with
``csum_sub`` and folded with ``csum_from32to16``. x86-64's ``csum_partial`` adds
64-bit little-endian words with end-around carry and folds to 32 bits the same
way; the result is the one's-complement sum modulo 2**32 - 1 in which zero is
written 0 only when every addend was zero, so `csum_partial` below computes
that directly.
"""

from __future__ import annotations

import errno
import struct
import time

from ...bpf.helpers import Helper
from .memory import M32, M64, Fault
from .xdp import CTX_PTR


def csum_partial(data: bytes, seed: int) -> int:
    """x86-64 ``csum_partial(data, len, seed)``: the 32-bit one's-complement sum, unfolded."""
    if len(data) % 4:
        data = data + bytes(4 - len(data) % 4)
    total = (seed & M32) + sum(struct.unpack(f"<{len(data) // 4}I", data))
    return 0 if total == 0 else 1 + (total - 1) % M32


def csum_add(a: int, b: int) -> int:
    res = (a + b) & M32
    return res + (res < b)


def csum_sub(a: int, b: int) -> int:
    return csum_add(a, ~b & M32)


def csum_from32to16(s: int) -> int:
    s = (s + (((s >> 16) | (s << 16)) & M32)) & M32
    return s >> 16


def csum_diff(from_: bytes, to: bytes, seed: int) -> int:
    """``bpf_csum_diff`` on byte strings: what the helper returns."""
    ret = seed & M32
    if from_ and to:
        ret = csum_sub(csum_partial(to, ret), csum_partial(from_, 0))
    elif to:
        ret = csum_partial(to, ret)
    elif from_:
        ret = ~csum_partial(from_, ~ret & M32) & M32
    return csum_from32to16(ret)


def _s32(v: int) -> int:
    return ((v & M32) ^ 0x80000000) - 0x80000000


def _ctx(m, value: int, what: str):
    if value != CTX_PTR:
        raise Fault(f"{what}: first argument {value:#x} is not the ctx pointer")
    return m.xdp


def map_lookup_elem(m, map_ptr, key_ptr, *_):
    bpf_map = m.map_at(map_ptr, "map_lookup_elem")
    key = m.mem.read(key_ptr, bpf_map.spec.key_size, "map_lookup_elem key")
    value = bpf_map.prog_lookup(key)
    if value is None:
        return 0
    writable = not bpf_map.spec.flags & 0x80  # BPF_F_RDONLY_PROG
    return m.mem.value_ptr(value, writable, f"map {bpf_map.spec.name!r} value")


def map_update_elem(m, map_ptr, key_ptr, value_ptr, flags, _):
    bpf_map = m.map_at(map_ptr, "map_update_elem")
    key = m.mem.read(key_ptr, bpf_map.spec.key_size, "map_update_elem key")
    value = m.mem.read(value_ptr, bpf_map.spec.value_size, "map_update_elem value")
    return bpf_map.prog_update(key, value, flags)


def map_delete_elem(m, map_ptr, key_ptr, *_):
    bpf_map = m.map_at(map_ptr, "map_delete_elem")
    return bpf_map.prog_delete(m.mem.read(key_ptr, bpf_map.spec.key_size, "map_delete_elem key"))


def ktime_get_ns(m, *_):
    return time.monotonic_ns()


def get_prandom_u32(m, *_):
    return m.rng.getrandbits(32)


def get_smp_processor_id(m, *_):
    return m.cpu


def get_numa_node_id(m, *_):
    return 0


def trace_printk(m, fmt_ptr, fmt_size, *_):
    fmt = m.mem.read(fmt_ptr, fmt_size & M32, "trace_printk fmt")
    return len(fmt.split(b"\0", 1)[0])


def csum_diff_helper(m, from_ptr, from_size, to_ptr, to_size, seed):
    from_ = m.mem.read(from_ptr, from_size & M32, "csum_diff from")
    to = m.mem.read(to_ptr, to_size & M32, "csum_diff to")
    return csum_diff(from_, to, seed)


def xdp_adjust_head(m, ctx, delta, *_):
    return _ctx(m, ctx, "xdp_adjust_head").adjust_head(_s32(delta))


def xdp_adjust_tail(m, ctx, delta, *_):
    return _ctx(m, ctx, "xdp_adjust_tail").adjust_tail(_s32(delta))


def xdp_adjust_meta(m, ctx, delta, *_):
    return _ctx(m, ctx, "xdp_adjust_meta").adjust_meta(_s32(delta))


def xdp_get_buff_len(m, ctx, *_):
    xdp = _ctx(m, ctx, "xdp_get_buff_len")
    return xdp.data_end - xdp.data


def xdp_load_bytes(m, ctx, offset, buf_ptr, length, _):
    xdp = _ctx(m, ctx, "xdp_load_bytes")
    offset, length = offset & M32, length & M32
    if offset > 0xFFFF or length > 0xFFFF:
        return -errno.EFAULT
    data = xdp.load_bytes(offset, length)
    if data is None:
        return -errno.EINVAL
    m.mem.write(buf_ptr, data, "xdp_load_bytes buf")
    return 0


def xdp_store_bytes(m, ctx, offset, buf_ptr, length, _):
    xdp = _ctx(m, ctx, "xdp_store_bytes")
    offset, length = offset & M32, length & M32
    if offset > 0xFFFF or length > 0xFFFF:
        return -errno.EFAULT
    data = m.mem.read(buf_ptr, length, "xdp_store_bytes buf")
    return 0 if xdp.store_bytes(offset, data) else -errno.EINVAL


HELPERS = {
    Helper.map_lookup_elem: map_lookup_elem,
    Helper.map_update_elem: map_update_elem,
    Helper.map_delete_elem: map_delete_elem,
    Helper.ktime_get_ns: ktime_get_ns,
    Helper.trace_printk: trace_printk,
    Helper.get_prandom_u32: get_prandom_u32,
    Helper.get_smp_processor_id: get_smp_processor_id,
    Helper.get_numa_node_id: get_numa_node_id,
    Helper.csum_diff: csum_diff_helper,
    Helper.xdp_adjust_head: xdp_adjust_head,
    Helper.xdp_adjust_tail: xdp_adjust_tail,
    Helper.xdp_adjust_meta: xdp_adjust_meta,
    Helper.xdp_get_buff_len: xdp_get_buff_len,
    Helper.xdp_load_bytes: xdp_load_bytes,
    Helper.xdp_store_bytes: xdp_store_bytes,
}

__all__ = ["HELPERS", "M64", "csum_diff", "csum_partial"]
