"""The batch loop, in the program's own module: one native call runs a whole batch of frames.

``i64 vxdp_batch(i8* ctx, i8* frames, i64 n, i64 stride, i32* geometry, i32* actions, i64 repeat)``
takes ``n`` frames ``stride`` bytes apart (pages of `vxdp.engine.interp.xdp`'s layout) and
per frame three offsets into it, ``data_meta``, ``data``, ``data_end``; it points the
context at each frame in turn, runs the program ``repeat`` times on it (as
BPF_PROG_TEST_RUN's repeat does: the runs share the frame, so an ``adjust_head`` is seen by
the next), writes the offsets the program left back and the action into ``actions``
(XDP_ABORTED for a packet that faulted), and returns how many packets faulted. Being in
the same module as the program lets LLVM inline the program into the loop. The loop times
itself (``clock_gettime`` around it, into the context's ``ELAPSED_NS``), as the kernel's test
run does, so a run's duration is the program's and not the Python call's.
"""

from __future__ import annotations

from llvmlite import ir

from .context import MAX_LOOPS, Ctx

I8, I32, I64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
I8P = I8.as_pointer()
BATCH_TYPE = ir.FunctionType(I64, [I8P, I64, I64, I64, I32.as_pointer(), I32.as_pointer(), I64])


def _c(v: int) -> ir.Constant:
    return ir.Constant(I64, v)


def _now(module: ir.Module, b: ir.IRBuilder) -> ir.Value:
    """CLOCK_MONOTONIC in nanoseconds."""
    clock = module.globals.get("clock_gettime") or ir.Function(
        module, ir.FunctionType(I32, [I32, I8P]), name="clock_gettime")
    ts = b.alloca(ir.ArrayType(I64, 2))
    b.call(clock, [ir.Constant(I32, 1), b.bitcast(ts, I8P)])
    sec = b.load(b.gep(ts, [_c(0), ir.Constant(I32, 0)]))
    nsec = b.load(b.gep(ts, [_c(0), ir.Constant(I32, 1)]))
    return b.add(b.mul(sec, _c(1_000_000_000)), nsec)


def add_batch(module: ir.Module, entry: ir.Function, name: str = "vxdp_batch") -> ir.Function:
    fn = ir.Function(module, BATCH_TYPE, name=name)
    ctx, frames, n, stride, geo, actions, repeat = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))

    def slot(off: int) -> ir.Value:
        return b.bitcast(b.gep(ctx, [_c(off)]), I64.as_pointer())

    stack = b.load(slot(Ctx.STACK_BASE))
    started = _now(module, b)
    i_slot, faults, r_slot, act = b.alloca(I64), b.alloca(I64), b.alloca(I64), b.alloca(I32)
    b.store(_c(0), i_slot)
    b.store(_c(0), faults)
    head, body, done = fn.append_basic_block("head"), fn.append_basic_block("body"), fn.append_basic_block("done")
    b.branch(head)
    b.position_at_end(head)
    i = b.load(i_slot)
    b.cbranch(b.icmp_unsigned("<", i, n), body, done)

    b.position_at_end(body)
    frame = b.add(frames, b.mul(i, stride))
    g = [b.gep(geo, [b.add(b.mul(i, _c(3)), _c(k))]) for k in range(3)]
    meta, data, end = (b.add(frame, b.sext(b.load(p), I64)) for p in g)
    b.store(frame, slot(Ctx.FRAME))
    b.store(meta, slot(Ctx.DATA_META))
    b.store(data, slot(Ctx.DATA))
    b.store(end, slot(Ctx.DATA_END))
    b.store(ir.Constant(I32, 0), act)
    b.store(_c(0), r_slot)
    rhead, rbody, rdone = fn.append_basic_block("rhead"), fn.append_basic_block("rbody"), fn.append_basic_block("rdone")
    b.branch(rhead)
    b.position_at_end(rhead)
    r = b.load(r_slot)
    b.cbranch(b.icmp_unsigned("<", r, repeat), rbody, rdone)
    b.position_at_end(rbody)
    b.store(_c(0), slot(Ctx.TAIL_CALLS))
    b.store(_c(MAX_LOOPS), slot(Ctx.LOOPS_LEFT))
    b.store(_c(0), slot(Ctx.FAULT))
    r0 = b.call(entry, [ctx, stack])
    fault = b.load(slot(Ctx.FAULT))
    bad, good = fn.append_basic_block("bad"), fn.append_basic_block("good")
    b.cbranch(b.icmp_unsigned("!=", fault, _c(0)), bad, good)
    b.position_at_end(bad)
    b.store(fault, slot(Ctx.LAST_FAULT))
    b.store(b.add(b.load(faults), _c(1)), faults)
    b.store(ir.Constant(I32, 0), act)
    b.branch(rdone)
    b.position_at_end(good)
    b.store(b.trunc(r0, I32), act)
    b.store(b.add(r, _c(1)), r_slot)
    b.branch(rhead)

    b.position_at_end(rdone)
    for p, off in zip(g, (Ctx.DATA_META, Ctx.DATA, Ctx.DATA_END), strict=True):
        b.store(b.trunc(b.sub(b.load(slot(off)), frame), I32), p)
    b.store(b.load(act), b.gep(actions, [i]))
    b.store(b.add(i, _c(1)), i_slot)
    b.branch(head)

    b.position_at_end(done)
    b.store(b.sub(_now(module, b), started), slot(Ctx.ELAPSED_NS))
    b.ret(b.load(faults))
    return fn
