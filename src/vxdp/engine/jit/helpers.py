"""BPF helpers as native code: inlined where they are a few instructions, internal IR functions otherwise.

Every helper the interpreter's ``HELPERS`` table has is here, with the same results
(`vxdp.engine.interp.helpers` is the reference: the same ``csum_diff`` arithmetic, the
same adjust limits from `vxdp.engine.interp.xdp`), so the engines agree. Array lookups
are inlined when the verifier saw a single map at the call (bounds check, multiply,
add); other map operations call the map runtime's native functions
(`maps`' ``map_runtime.ADDRESSES``) through their addresses, compiled in as constants.
Nothing here calls back into Python.

``bpf_get_prandom_u32`` is xorshift64* over the context's RNG word (the engine seeds it),
``bpf_ktime_get_ns`` is ``clock_gettime(CLOCK_MONOTONIC)`` as the kernel's is.
"""

from __future__ import annotations

import errno

from llvmlite import ir

from ...bpf.helpers import Helper
from ..interp.xdp import ETH_HLEN, META_MAX, XDP_FRAME_SIZE
from .context import HARD_END, Ctx
from .irtypes import ARRAY, I1, I8, I8P, I32, I64, M32, PERCPU_ARRAY, JitLoadError

CLOCK_MONOTONIC = 1


def _c(v: int, ty: ir.IntType = I64) -> ir.Constant:
    return ir.Constant(ty, v & ((1 << ty.width) - 1))


class HelperEmitter:
    """Emits helper calls for the functions of one module, making its internal helper functions once."""

    def __init__(self, module: ir.Module, addresses: dict[str, int]):
        self.module = module
        self.addresses = addresses
        self._funcs: dict[str, ir.Function] = {}

    # -- call sites -----------------------------------------------------------------------------
    def emit(self, fb, pc: int, helper: int) -> ir.Value:
        """Code for ``call helper`` at ``pc`` in function builder ``fb``; returns the new r0."""
        b = fb.b
        args = [fb.get(i) for i in range(1, 6)]
        cpu = fb.ctx_load(Ctx.CPU)
        if helper == Helper.map_lookup_elem:
            maps = [fb.mb.maps[h] for h in fb.notes.call_maps.get(pc, ()) if h >= 0]
            if len(maps) == 1 and maps[0].kind in (ARRAY, PERCPU_ARRAY):
                return self._array_lookup(b, maps[0], args[1], cpu)
            return self._native(b, "lookup", [args[0], args[1], cpu])
        if helper == Helper.map_update_elem:
            return self._native(b, "update", [args[0], args[1], args[2], args[3], cpu])
        if helper == Helper.map_delete_elem:
            return self._native(b, "delete", [args[0], args[1], cpu])
        if helper == Helper.get_smp_processor_id:
            return cpu
        if helper == Helper.get_numa_node_id:
            return _c(0)
        if helper == Helper.xdp_get_buff_len:
            return b.sub(fb.ctx_load(Ctx.DATA_END), fb.ctx_load(Ctx.DATA))
        name = _CALLED.get(helper)
        if name is None:
            try:
                label = Helper(helper).name
            except ValueError:
                label = f"#{helper}"
            raise JitLoadError(f"helper {label} (id {helper}) is not supported by the JIT")
        fn = self.function(name)
        first, count = _ARGS[name]
        return b.call(fn, [fb.ctx, *args[first:first + count]])

    def _native(self, b: ir.IRBuilder, name: str, args: list[ir.Value]) -> ir.Value:
        address = self.addresses.get(name)
        if not address:
            raise JitLoadError(f"the map runtime has no native {name!r} function")
        types = [I8P] + [I8P if i < 2 or name == "update" and i == 2 else I64 for i in range(1, len(args))]
        types[0] = I8P
        fnty = ir.FunctionType(I8P if name == "lookup" else I64, types)
        call_args = [b.inttoptr(a, t) if t == I8P else a for a, t in zip(args, types, strict=True)]
        r = b.call(b.inttoptr(_c(address), fnty.as_pointer()), call_args)
        return b.ptrtoint(r, I64) if name == "lookup" else r

    def _array_lookup(self, b: ir.IRBuilder, m, key_ptr: ir.Value, cpu: ir.Value) -> ir.Value:
        key = b.zext(b.load(b.inttoptr(key_ptr, I32.as_pointer()), align=1), I64)
        index = key
        if m.kind == PERCPU_ARRAY:
            index = b.add(b.mul(cpu, _c(m.max_entries)), key)
        addr = b.add(_c(m.values), b.mul(index, _c(m.stride)))
        return b.select(b.icmp_unsigned("<", key, _c(m.max_entries)), addr, _c(0))

    # -- internal functions -----------------------------------------------------------------------
    def function(self, name: str) -> ir.Function:
        fn = self._funcs.get(name)
        if fn is None:
            nargs = _ARGS[name][1]
            fn = ir.Function(self.module, ir.FunctionType(I64, [I8P] + [I64] * nargs), name=f"helper_{name}")
            fn.linkage = "internal"
            self._funcs[name] = fn
            getattr(self, f"_build_{name}")(fn, ir.IRBuilder(fn.append_basic_block("entry")))
        return fn

    @staticmethod
    def _ctx(b: ir.IRBuilder, ctx: ir.Value, off: int) -> ir.Value:
        return b.bitcast(b.gep(ctx, [_c(off)]), I64.as_pointer())

    @staticmethod
    def _fail_unless(b: ir.IRBuilder, fn: ir.Function, ok: ir.Value, err: int) -> None:
        bad, good = fn.append_basic_block(), fn.append_basic_block()
        b.cbranch(ok, good, bad)
        b.position_at_end(bad)
        b.ret(_c(-err))
        b.position_at_end(good)

    def _build_adjust_head(self, fn, b):
        ctx, delta = fn.args[0], b.sext(b.trunc(fn.args[1], I32), I64)
        p_data, p_meta, p_end = (self._ctx(b, ctx, o) for o in (Ctx.DATA, Ctx.DATA_META, Ctx.DATA_END))
        data, meta, end = b.load(p_data), b.load(p_meta), b.load(p_end)
        frame = b.load(self._ctx(b, ctx, Ctx.FRAME))
        metalen = b.sub(data, meta)
        new = b.add(data, delta)
        ok = b.and_(b.icmp_signed(">=", b.sub(new, frame), b.add(metalen, _c(XDP_FRAME_SIZE))),
                    b.icmp_signed("<=", new, b.sub(end, _c(ETH_HLEN))))
        self._fail_unless(b, fn, ok, errno.EINVAL)
        move = self.module.declare_intrinsic("llvm.memmove", [I8P, I8P, I64])
        b.call(move, [b.inttoptr(b.add(meta, delta), I8P), b.inttoptr(meta, I8P), metalen, ir.Constant(I1, 0)])
        b.store(b.add(meta, delta), p_meta)
        b.store(new, p_data)
        b.ret(_c(0))

    def _build_adjust_tail(self, fn, b):
        ctx, delta = fn.args[0], b.sext(b.trunc(fn.args[1], I32), I64)
        p_end = self._ctx(b, ctx, Ctx.DATA_END)
        data, end = b.load(self._ctx(b, ctx, Ctx.DATA)), b.load(p_end)
        frame = b.load(self._ctx(b, ctx, Ctx.FRAME))
        new = b.add(end, delta)
        ok = b.and_(b.icmp_signed("<=", b.sub(new, frame), _c(HARD_END)),
                    b.icmp_signed(">=", new, b.add(data, _c(ETH_HLEN))))
        self._fail_unless(b, fn, ok, errno.EINVAL)
        with b.if_then(b.icmp_signed(">", delta, _c(0))):
            fill = self.module.declare_intrinsic("llvm.memset", [I8P, I64])
            b.call(fill, [b.inttoptr(end, I8P), ir.Constant(I8, 0), delta, ir.Constant(I1, 0)])
        b.store(new, p_end)
        b.ret(_c(0))

    def _build_adjust_meta(self, fn, b):
        ctx, delta = fn.args[0], b.sext(b.trunc(fn.args[1], I32), I64)
        p_meta = self._ctx(b, ctx, Ctx.DATA_META)
        data, meta = b.load(self._ctx(b, ctx, Ctx.DATA)), b.load(p_meta)
        frame = b.load(self._ctx(b, ctx, Ctx.FRAME))
        new = b.add(meta, delta)
        ok = b.and_(b.icmp_signed(">=", b.sub(new, frame), _c(XDP_FRAME_SIZE)), b.icmp_signed("<=", new, data))
        self._fail_unless(b, fn, ok, errno.EINVAL)
        metalen = b.sub(data, new)
        ok = b.and_(b.icmp_unsigned("==", b.and_(metalen, _c(3)), _c(0)), b.icmp_unsigned("<=", metalen, _c(META_MAX)))
        self._fail_unless(b, fn, ok, errno.EACCES)
        b.store(new, p_meta)
        b.ret(_c(0))

    def _build_ktime(self, fn, b):
        ts = b.alloca(ir.ArrayType(I64, 2))
        clock = self.module.globals.get("clock_gettime") or ir.Function(
            self.module, ir.FunctionType(I32, [I32, I8P]), name="clock_gettime")
        b.call(clock, [ir.Constant(I32, CLOCK_MONOTONIC), b.bitcast(ts, I8P)])
        sec = b.load(b.gep(ts, [_c(0), ir.Constant(I32, 0)]))
        nsec = b.load(b.gep(ts, [_c(0), ir.Constant(I32, 1)]))
        b.ret(b.add(b.mul(sec, _c(1_000_000_000)), nsec))

    def _build_prandom(self, fn, b):
        slot = self._ctx(b, fn.args[0], Ctx.RNG)
        x = b.load(slot)
        x = b.xor(x, b.lshr(x, _c(12)))
        x = b.xor(x, b.shl(x, _c(25)))
        x = b.xor(x, b.lshr(x, _c(27)))
        b.store(x, slot)
        b.ret(b.lshr(b.mul(x, _c(0x2545F4914F6CDD1D)), _c(32)))

    def _build_trace_printk(self, fn, b):
        """What the interpreter answers: the format's length up to its first NUL, within ``size``."""
        fmt, size = fn.args[1], b.and_(fn.args[2], _c(M32))
        i = b.alloca(I64)
        b.store(_c(0), i)
        head, body, more, done = (fn.append_basic_block() for _ in range(4))
        b.branch(head)
        b.position_at_end(head)
        n = b.load(i)
        b.cbranch(b.icmp_unsigned("<", n, size), body, done)
        b.position_at_end(body)
        byte = b.load(b.inttoptr(b.add(fmt, n), I8P))
        b.cbranch(b.icmp_unsigned("==", byte, ir.Constant(I8, 0)), done, more)
        b.position_at_end(more)
        b.store(b.add(n, _c(1)), i)
        b.branch(head)
        b.position_at_end(done)
        b.ret(b.load(i))

    def _csum_partial(self) -> ir.Function:
        """x86-64 ``csum_partial`` as the interpreter computes it: a zero-padded sum of little-endian
        32-bit words plus the seed, then the one's-complement value modulo 2**32 - 1."""
        fn = self._funcs.get("csum_partial")
        if fn is not None:
            return fn
        fn = ir.Function(self.module, ir.FunctionType(I64, [I64, I64, I64]), name="helper_csum_partial")
        fn.linkage = "internal"
        self._funcs["csum_partial"] = fn
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        p, n, seed = fn.args
        acc, i = b.alloca(I64), b.alloca(I64)
        b.store(b.and_(seed, _c(M32)), acc)
        b.store(_c(0), i)
        head, body, done = fn.append_basic_block(), fn.append_basic_block(), fn.append_basic_block()
        b.branch(head)
        b.position_at_end(head)
        k = b.load(i)
        b.cbranch(b.icmp_unsigned("<", k, n), body, done)
        b.position_at_end(body)
        byte = b.zext(b.load(b.inttoptr(b.add(p, k), I8P)), I64)
        b.store(b.add(b.load(acc), b.shl(byte, b.shl(b.and_(k, _c(3)), _c(3)))), acc)
        b.store(b.add(k, _c(1)), i)
        b.branch(head)
        b.position_at_end(done)
        total = b.load(acc)
        folded = b.add(_c(1), b.urem(b.sub(total, _c(1)), _c(M32)))
        b.ret(b.select(b.icmp_unsigned("==", total, _c(0)), _c(0), folded))
        return fn

    def _build_csum_diff(self, fn, b):
        partial = self._csum_partial()
        _, src, src_size, dst, dst_size, seed = fn.args
        src_size, dst_size = b.and_(src_size, _c(M32)), b.and_(dst_size, _c(M32))

        def add(x, y):
            res = b.and_(b.add(x, y), _c(M32))
            return b.add(res, b.zext(b.icmp_unsigned("<", res, y), I64))

        ret = b.and_(seed, _c(M32))
        has_from = b.icmp_unsigned("!=", src_size, _c(0))
        has_to = b.icmp_unsigned("!=", dst_size, _c(0))
        both = b.call(partial, [dst, dst_size, ret])
        both = add(both, b.and_(b.xor(b.call(partial, [src, src_size, _c(0)]), _c(M32)), _c(M32)))
        only_to = b.call(partial, [dst, dst_size, ret])
        only_from = b.and_(b.xor(b.call(partial, [src, src_size, b.and_(b.xor(ret, _c(M32)), _c(M32))]),
                                 _c(M32)), _c(M32))
        r = b.select(has_from, b.select(has_to, both, only_from), b.select(has_to, only_to, ret))
        rot = b.and_(b.or_(b.lshr(r, _c(16)), b.shl(r, _c(16))), _c(M32))
        b.ret(b.lshr(b.and_(b.add(r, rot), _c(M32)), _c(16)))

    def _build_load_bytes(self, fn, b):
        self._bytes(fn, b, store=False)

    def _build_store_bytes(self, fn, b):
        self._bytes(fn, b, store=True)

    def _bytes(self, fn, b, store: bool) -> None:
        ctx, off, buf, length = fn.args[0], b.and_(fn.args[1], _c(M32)), fn.args[2], b.and_(fn.args[3], _c(M32))
        ok = b.and_(b.icmp_unsigned("<=", off, _c(0xFFFF)), b.icmp_unsigned("<=", length, _c(0xFFFF)))
        self._fail_unless(b, fn, ok, errno.EFAULT)
        data, end = b.load(self._ctx(b, ctx, Ctx.DATA)), b.load(self._ctx(b, ctx, Ctx.DATA_END))
        at = b.add(data, off)
        self._fail_unless(b, fn, b.icmp_unsigned("<=", b.add(at, length), end), errno.EINVAL)
        copy = self.module.declare_intrinsic("llvm.memmove", [I8P, I8P, I64])
        src, dst = (b.inttoptr(buf, I8P), b.inttoptr(at, I8P)) if store else (b.inttoptr(at, I8P), b.inttoptr(buf, I8P))
        b.call(copy, [dst, src, length, ir.Constant(I1, 0)])
        b.ret(_c(0))


# helper -> internal function name; per name, the first BPF argument it takes (r1 is 0: the helpers that
# take the context get it as their first native argument instead) and how many
_CALLED = {
    Helper.xdp_adjust_head: "adjust_head", Helper.xdp_adjust_tail: "adjust_tail",
    Helper.xdp_adjust_meta: "adjust_meta", Helper.ktime_get_ns: "ktime", Helper.get_prandom_u32: "prandom",
    Helper.trace_printk: "trace_printk", Helper.csum_diff: "csum_diff", Helper.xdp_load_bytes: "load_bytes",
    Helper.xdp_store_bytes: "store_bytes",
}
_ARGS = {"adjust_head": (1, 1), "adjust_tail": (1, 1), "adjust_meta": (1, 1), "ktime": (0, 0), "prandom": (0, 0),
         "trace_printk": (0, 2), "csum_diff": (0, 5), "load_bytes": (1, 3), "store_bytes": (1, 3)}
