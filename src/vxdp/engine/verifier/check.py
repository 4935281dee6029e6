"""The verifier's walk: every path of the program, instruction by instruction, on abstract states.

A depth-first walk over (instruction, `State`) pairs, as the kernel's
``do_check``: a conditional jump whose outcome the state does not decide forks
the walk, and the side not taken now waits on a stack. At the instructions
where paths meet (jump targets, the instruction after a branch or a call) the
state is compared with the states already verified there: one that covers it
(`State.subsumes`, on live registers only) ends the path, since everything that
can follow was already checked. A state *equal* to one still being walked
(an ancestor on the path) is a loop that makes no progress: refused, as the
kernel's "infinite loop detected". Every other loop is unrolled until it exits
or the budget of processed instructions (the kernel's 1,000,000) runs out.

Memory, ALU and helper rules live in `access`, `alu` and `calls`; this module
does the control flow: jumps and what they teach, bpf-to-bpf calls (one
`Frame` each, at most 8, 512 bytes of stack each and in all), ``bpf_loop``
callbacks, and ``exit``. A ``bpf_loop`` callback is walked once, from the state
at the call: what a first iteration leaves in the caller's stack is not fed to
a second one (the kernel iterates callbacks to a fixed point).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ...bpf.disasm import format_insn
from ...bpf.helpers import Helper
from ...bpf.isa import LDDW, SIZE_BYTES, Cls, Insn, JmpOp, Mode, PseudoCall, PseudoSrc, Size, lddw_value
from ...bpf.mapspec import ARRAY_TYPES, MapSpec
from . import access, alu, cfg
from .access import Refuse
from .branch import refine
from .calls import HelperCall
from .errors import VerifierRejected, VerifierResult
from .scalar import Scalar
from .state import (
    MAX_CALL_FRAMES,
    NEVER_NULL,
    NOT_INIT,
    STACK_SIZE,
    UNKNOWN,
    Frame,
    Reg,
    RegType,
    State,
    scalar,
)

DEFAULT_BUDGET = 1_000_000
MAX_STATES_PER_INSN = 64
ATOMIC_RMW = {0x00, 0x40, 0x50, 0xA0}
LOAD_ACQ, STORE_REL = 0x100, 0x110


@dataclass(eq=False)
class Checkpoint:
    """A state kept at a prune point; ``branches`` counts the paths from it still being walked."""

    state: State
    key: tuple
    hash: int
    parent: Checkpoint | None
    branches: int = 1


class Verifier:
    def __init__(self, insns: list[Insn], maps: dict[int, MapSpec], *, privileged: bool = True,
                 func_info: bool = False, budget: int = DEFAULT_BUDGET):
        self.insns = list(insns)
        self.maps = dict(maps)
        self.privileged = privileged
        self.func_info = func_info
        self.budget = budget
        self.processed = 0
        self.visited: dict[int, list[Checkpoint]] = {}
        self.depths: dict[int, int] = {}
        self._ids = 0

    def next_id(self, _kind=None) -> int:
        self._ids += 1
        return self._ids

    # --- the walk -------------------------------------------------------------------------------

    def run(self) -> VerifierResult:
        try:
            self.cfg = cfg.build(self.insns)
        except cfg.CfgError as e:
            raise self._rejected(e.insn, e.reason, None) from None
        regs = [NOT_INIT] * 11
        regs[1] = Reg(RegType.CTX)
        regs[10] = Reg(RegType.STACK)
        pending: list[tuple[int, State, Checkpoint | None]] = [(0, State([Frame(regs)]), None)]
        while pending:
            pc, st, cp = pending.pop()
            self._walk(pc, st, cp, pending)
        states = sum(len(v) for v in self.visited.values())
        return VerifierResult(self.processed, states, dict(self.depths))

    def _walk(self, pc: int, st: State, cp: Checkpoint | None, pending: list) -> None:
        while True:
            if pc in self.cfg.prune:
                verdict = self._visit(pc, st, cp)
                if verdict is None:
                    _finish(cp)
                    return
                cp = verdict
            self.processed += 1
            if self.processed > self.budget:
                raise self._rejected(pc, f"BPF program is too large or loops too long: processed {self.processed} "
                                     f"insns (limit {self.budget}); bound the loop or split the program", st)
            try:
                succ = self._step(pc, st)
            except Refuse as e:
                raise self._rejected(pc, str(e), st) from None
            if not succ:
                _finish(cp)
                return
            for other_pc, other in succ[1:]:
                if cp is not None:
                    cp.branches += 1
                pending.append((other_pc, other, cp))
            pc, st = succ[0]

    def _visit(self, pc: int, st: State, cp: Checkpoint | None) -> Checkpoint | None:
        """``None`` when a verified state covers ``st``; otherwise the new checkpoint for the path."""
        seen = self.visited.setdefault(pc, [])
        key = st.key()
        h = hash(key)
        live = self._live(pc, st)
        for old in seen:
            if old.branches:
                if old.hash == h and old.key == key:
                    raise self._rejected(pc, f"infinite loop detected at insn {pc}: the state repeats exactly, "
                                         "so the loop never ends", st)
            elif old.state.subsumes(st, live):
                return None
        new = Checkpoint(st.copy(), key, h, cp)
        if len(seen) >= MAX_STATES_PER_INSN:
            seen.pop(0)
        seen.append(new)
        return new  # the path moves from cp to its child, which cp already counts

    def _live(self, pc: int, st: State) -> list[frozenset[int]]:
        live = []
        for i, f in enumerate(st.frames):
            if i == len(st.frames) - 1:
                live.append(self.cfg.live[pc])
            else:
                live.append(self.cfg.live[st.frames[i + 1].callsite + 1] - {0, 1, 2, 3, 4, 5})
        return live

    # --- one instruction ------------------------------------------------------------------------

    def _step(self, pc: int, st: State) -> list[tuple[int, State]]:
        insn = self.insns[pc]
        cls = insn.cls
        if insn.dst > 10 or insn.src > 10 and cls is not Cls.LD:
            raise Refuse(f"R{max(insn.dst, insn.src)} is invalid: there are registers r0-r10 only")
        if cls in (Cls.ALU, Cls.ALU64):
            alu.step(st, insn, self.next_id)
            return [(pc + 1, st)]
        if cls is Cls.LD:
            return [(self._ld(pc, st, insn), st)]
        if cls in (Cls.LDX, Cls.ST, Cls.STX):
            self._mem(st, insn)
            return [(pc + 1, st)]
        return self._jmp(pc, st, insn)

    def _ld(self, pc: int, st: State, insn: Insn) -> int:
        if insn.code in (Cls.LD | Mode.ABS | s for s in Size) or insn.code in (Cls.LD | Mode.IND | s for s in Size):
            raise Refuse("BPF_LD_[ABS|IND] instructions not allowed for this program type")
        if insn.code != LDDW or insn.off or insn.dst > 10:
            raise Refuse(f"unknown opcode {insn.code:02x}")
        if insn.dst == 10:
            raise Refuse("frame pointer is read only")
        second = self.insns[pc + 1]
        if insn.src == PseudoSrc.IMM:
            st.regs[insn.dst] = scalar(Scalar.const(lddw_value(insn, second)))
        elif insn.src in (PseudoSrc.MAP_FD, PseudoSrc.MAP_VALUE):
            spec = self.maps.get(insn.imm)
            if spec is None:
                raise Refuse(f"fd {insn.imm} is not pointing to valid bpf_map")
            if insn.src == PseudoSrc.MAP_FD:
                if second.imm:
                    raise Refuse("invalid bpf_ld_imm64 insn: a map reference's second slot must be 0")
                st.regs[insn.dst] = Reg(RegType.MAP_PTR, map=insn.imm)
            else:
                if spec.type not in ARRAY_TYPES or spec.max_entries != 1 and not spec.is_global_data:
                    raise Refuse(f"map {spec.name!r} has no direct value access (an array of one element has)")
                if not 0 <= second.imm < spec.value_size:
                    raise Refuse(f"invalid access to map value pointer, value_size={spec.value_size} off={second.imm}")
                st.regs[insn.dst] = Reg(RegType.MAP_VALUE, off=second.imm, map=insn.imm)
        elif insn.src == PseudoSrc.FUNC:
            st.regs[insn.dst] = Reg(RegType.FUNC, map=pc + 1 + insn.imm)
        else:
            raise Refuse(f"lddw with src {insn.src} ({PseudoSrc(insn.src).name if insn.src < 7 else '?'}) "
                         "is not supported")
        return pc + 2

    def _mem(self, st: State, insn: Insn) -> None:
        cls, mode, size = insn.cls, insn.code & 0xE0, SIZE_BYTES[Size(insn.code & 0x18)]
        if cls is Cls.LDX:
            if mode not in (Mode.MEM, Mode.MEMSX) or mode == Mode.MEMSX and size == 8 or insn.imm:
                raise Refuse(f"unknown opcode {insn.code:02x}")
            if insn.dst == 10:
                raise Refuse("frame pointer is read only")
            base = alu.read(st, insn.src)
            st.regs[insn.dst] = self._load(st, base, insn.src, insn.off, size, mode == Mode.MEMSX)
            return
        if cls is Cls.ST:
            if mode != Mode.MEM or insn.src:
                raise Refuse(f"unknown opcode {insn.code:02x}")
            self._store(st, alu.read(st, insn.dst), insn.dst, insn.off, size, scalar(Scalar.const(insn.imm)))
            return
        if mode == Mode.MEM:
            if insn.imm:
                raise Refuse("BPF_STX uses reserved fields")
            value = alu.read(st, insn.src)
            self._store(st, alu.read(st, insn.dst), insn.dst, insn.off, size, value)
        elif mode == Mode.ATOMIC:
            self._atomic(st, insn, size)
        else:
            raise Refuse(f"unknown opcode {insn.code:02x}")

    def _load(self, st: State, base: Reg, regno: int, off: int, size: int, signed: bool) -> Reg:
        t = base.type
        if t is RegType.CTX:
            return access.ctx_read(base, regno, off, size, signed)
        if t is RegType.STACK:
            self._note_depth(st, base, off)
            return access.stack_read(st, base, regno, off, size, signed, self.privileged)
        if t in (RegType.PACKET, RegType.PACKET_META):
            access.packet(base, regno, off, size)
            return access._loaded(size, signed)
        if t is RegType.MAP_VALUE:
            known = access.map_value(base, regno, off, size, self.maps[base.map], False)
            if known is not None:
                return scalar(known.sign_extend(8 * size) if signed and size < 8 else known)
            return access._loaded(size, signed)
        raise Refuse(f"R{regno} invalid mem access '{t.value}'" + _hint(t))

    def _store(self, st: State, base: Reg, regno: int, off: int, size: int, value: Reg) -> None:
        t = base.type
        if t is RegType.CTX:
            raise Refuse(f"invalid bpf_context access off={off} size={size}: the XDP context is read-only")
        if t is RegType.STACK:
            self._note_depth(st, base, off)
            access.stack_write(st, base, regno, off, size, value)
        elif t in (RegType.PACKET, RegType.PACKET_META):
            access.packet(base, regno, off, size)
        elif t is RegType.MAP_VALUE:
            access.map_value(base, regno, off, size, self.maps[base.map], True)
        else:
            raise Refuse(f"R{regno} invalid mem access '{t.value}'" + _hint(t))

    def _atomic(self, st: State, insn: Insn, size: int) -> None:
        imm = insn.imm
        base = alu.read(st, insn.dst if imm != LOAD_ACQ else insn.src)
        regno = insn.dst if imm != LOAD_ACQ else insn.src
        if imm == LOAD_ACQ:
            if insn.dst == 10:
                raise Refuse("frame pointer is read only")
            st.regs[insn.dst] = self._load(st, base, regno, insn.off, size, False)
            return
        if imm == STORE_REL:
            self._store(st, base, regno, insn.off, size, alu.read(st, insn.src))
            return
        if imm & ~1 not in ATOMIC_RMW and imm not in (0xE1, 0xF1):
            raise Refuse(f"BPF_ATOMIC uses invalid atomic opcode {imm:02x}")
        if size not in (4, 8):
            raise Refuse("invalid atomic operand size")
        alu.read(st, insn.src)
        if imm == 0xF1:
            alu.read(st, 0)
        if base.type in (RegType.PACKET, RegType.PACKET_META, RegType.CTX):
            raise Refuse(f"BPF_ATOMIC stores into R{insn.dst} {base.type.value} is not allowed")
        fixed = base.off + insn.off
        if fixed % size or not base.scalar.is_const and base.scalar.tnum.value & (size - 1) | (
                base.scalar.tnum.mask & (size - 1)) or base.scalar.is_const and base.scalar.value % size:
            raise Refuse(f"misaligned {base.type.value} access off {base.off}+{insn.off} size {size}: "
                         "atomics must be aligned")
        self._load(st, base, regno, insn.off, size, False)
        if base.type is RegType.STACK:
            access.stack_write(st, base, regno, insn.off, size, None)
        else:
            self._store(st, base, regno, insn.off, size, UNKNOWN)
        old = scalar(Scalar.urange(0, 0xFFFFFFFF)) if size == 4 else UNKNOWN
        if imm == 0xF1:
            st.regs[0] = old
        elif imm & 1:
            if insn.src == 10:
                raise Refuse("frame pointer is read only")
            st.regs[insn.src] = old

    def _note_depth(self, st: State, base: Reg, off: int) -> None:
        lo = base.off + off + min(0, base.scalar.smin)
        frame = st.frames[base.frame]
        frame.depth = max(frame.depth, -lo)
        total = sum(_round_depth(max(f.depth, 1)) for f in st.frames)
        if len(st.frames) > 1 and total > STACK_SIZE:
            raise Refuse(f"combined stack size of {len(st.frames)} calls is {total}. Too large "
                         f"(limit {STACK_SIZE} bytes for all frames)")

    # --- jumps, calls, exit ---------------------------------------------------------------------

    def _jmp(self, pc: int, st: State, insn: Insn) -> list[tuple[int, State]]:
        op = insn.code & 0xF0
        wide = insn.cls is Cls.JMP
        if not wide and op in (JmpOp.CALL, JmpOp.EXIT, JmpOp.JCOND):
            raise Refuse(f"unknown opcode {insn.code:02x}")
        if op == JmpOp.JA:
            if insn.code & 0x08 or insn.src or insn.dst or (insn.imm if wide else insn.off):
                raise Refuse("BPF_JA uses reserved fields")
            return [(cfg.jump_target(self.insns, pc), st)]
        if op == JmpOp.CALL:
            return self._call(pc, st, insn)
        if op == JmpOp.EXIT:
            return self._exit(pc, st, insn)
        if op == JmpOp.JCOND:
            if not wide or insn.src or insn.dst or insn.imm or insn.code & 0x08:
                raise Refuse(f"unknown opcode {insn.code:02x}")
            return [(pc + 1, st), (pc + 1 + insn.off, st.copy())]
        if op == 0xF0:
            raise Refuse(f"unknown opcode {insn.code:02x}")
        is_x = bool(insn.code & 0x08)
        if (is_x and insn.imm) or (not is_x and insn.src):
            raise Refuse("BPF_JMP/JMP32 uses reserved fields")
        a = alu.read(st, insn.dst)
        b = alu.read(st, insn.src) if is_x else scalar(Scalar.const(insn.imm if wide else insn.imm & 0xFFFFFFFF))
        target = pc + 1 + insn.off
        out = []
        fall = st.copy()
        if self._cond(fall, JmpOp(op), insn, a, b, False, wide, is_x):
            out.append((pc + 1, fall))
        if self._cond(st, JmpOp(op), insn, a, b, True, wide, is_x):
            out.append((target, st))
        return out

    def _cond(self, st: State, op: JmpOp, insn: Insn, a: Reg, b: Reg, taken: bool, wide: bool, is_x: bool) -> bool:
        """Teach ``st`` that the jump went the ``taken`` way; False if it cannot."""
        if a.type is RegType.SCALAR and b.type is RegType.SCALAR:
            r = refine(op, a.scalar, b.scalar, taken, wide)
            if r is None:
                return False
            st.regs[insn.dst] = scalar(r[0])
            if is_x:
                st.regs[insn.src] = scalar(r[1])
            return True
        if not wide:
            return True
        if op in (JmpOp.JEQ, JmpOp.JNE) and (a.is_pointer != b.is_pointer):
            ptr, other = (a, b) if a.is_pointer else (b, a)
            if other.is_const and other.scalar.value == 0:
                is_null = taken == (op == JmpOp.JEQ)
                if ptr.type in NEVER_NULL:
                    return not is_null
                if ptr.type is RegType.MAP_VALUE_OR_NULL:
                    pid = ptr.id
                    st.retype(lambda r: r.type is RegType.MAP_VALUE_OR_NULL and r.id == pid,
                              (lambda r: scalar(Scalar.const(0))) if is_null
                              else (lambda r: replace(r, type=RegType.MAP_VALUE, id=0)))
            return True
        if a.is_pointer and b.is_pointer and op in (JmpOp.JGT, JmpOp.JGE, JmpOp.JLT, JmpOp.JLE):
            _packet_range(st, op, a, b, taken)
        return True

    def _call(self, pc: int, st: State, insn: Insn) -> list[tuple[int, State]]:
        if insn.src == PseudoCall.CALL:
            if insn.dst or insn.off:
                raise Refuse("BPF_CALL uses reserved fields")
            return [(self._enter(pc, st, pc + 1 + insn.imm, None), st)]
        if insn.src == PseudoCall.KFUNC:
            raise Refuse(f"kfunc calls are not supported (kfunc#{insn.imm})")
        if insn.src != PseudoCall.HELPER or insn.dst or insn.off:
            raise Refuse("BPF_CALL uses reserved fields")
        if insn.imm == Helper.tail_call and len(st.frames) > 1 and not self.func_info:
            raise Refuse("tail_call is not allowed in subprogs without BTF")
        loop_ctx = st.regs[3]
        call = HelperCall(st, insn.imm, self.maps, self.privileged, self.next_id)
        call.check()
        if insn.imm == Helper.loop and call.callback is not None:
            return [(self._enter(pc, st, call.callback, loop_ctx), st)]
        return [(pc + 1, st)]

    def _enter(self, pc: int, st: State, target: int, loop_ctx: Reg | None) -> int:
        """Push the frame of a bpf-to-bpf call (``loop_ctx is None``) or of a ``bpf_loop`` callback."""
        if len(st.frames) >= MAX_CALL_FRAMES:
            raise Refuse(f"the call stack of {len(st.frames) + 1} frames is too deep (limit {MAX_CALL_FRAMES})")
        caller = st.cur
        regs = [NOT_INIT] * 11
        if loop_ctx is not None:  # bpf_loop(nr, cb, ctx, flags) calls cb(index, ctx)
            regs[1] = scalar(Scalar.urange(0, 0xFFFFFFFF))
            regs[2] = loop_ctx
        else:
            regs[1:6] = caller.regs[1:6]
        regs[10] = Reg(RegType.STACK, frame=len(st.frames))
        st.frames.append(Frame(regs, callsite=pc, start=target, callback=loop_ctx is not None))
        return target

    def _exit(self, pc: int, st: State, insn: Insn) -> list[tuple[int, State]]:
        if insn.code & 0x08 or insn.src or insn.dst or insn.imm:
            raise Refuse("BPF_EXIT uses reserved fields")
        frame = st.cur
        r0 = alu.read(st, 0) if len(st.frames) == 1 or frame.callback else st.regs[0]
        self.depths[frame.start] = max(self.depths.get(frame.start, 0), frame.depth)
        if len(st.frames) == 1:
            if r0.type is not RegType.SCALAR and not self.privileged:
                raise Refuse(f"R0 leaks addr as return value: the program must return a number, R0={r0}")
            return []
        if frame.callback:
            if r0.type is not RegType.SCALAR or r0.scalar.umax > 1:
                raise Refuse(f"At callback return the register R0 has {r0}: it should have been in [0, 1]")
        elif r0.type is RegType.STACK and r0.frame == len(st.frames) - 1:
            raise Refuse("cannot return stack pointer to the caller")
        st.frames.pop()
        # nothing may keep pointing into the popped frame
        depth = len(st.frames)
        st.retype(lambda r: r.type is RegType.STACK and r.frame >= depth, lambda r: UNKNOWN)
        alu.clobber_caller_saved(st)
        st.regs[0] = UNKNOWN if frame.callback else r0
        return [(frame.callsite + 1, st)]

    # --- refusals -------------------------------------------------------------------------------

    def _rejected(self, pc: int, reason: str, st: State | None) -> VerifierRejected:
        try:
            text = format_insn(self.insns, pc)
        except IndexError:
            text = "?"
        lines = [f"{pc}: ({self.insns[pc].code:02x}) {text}" if 0 <= pc < len(self.insns) else f"{pc}: ?"]
        if st is not None:
            regs = _regs_read(self.insns[pc]) if 0 <= pc < len(self.insns) else range(11)
            shown = [f"R{r}={st.regs[r]}" for r in regs if st.regs[r].type is not RegType.NOT_INIT or r != 10]
            if shown:
                lines.append("  " + " ".join(shown) + (f"  (frame {len(st.frames) - 1})" if len(st.frames) > 1 else ""))
        lines.append(reason)
        return VerifierRejected(pc, reason, "\n".join(lines))


def _round_depth(d: int) -> int:
    return (d + 31) // 32 * 32


def _hint(t: RegType) -> str:
    if t is RegType.MAP_VALUE_OR_NULL:
        return ": the lookup may have returned NULL; check it against 0 first"
    if t is RegType.SCALAR:
        return ": the register holds a number, not a pointer"
    return ""


def _regs_read(insn: Insn) -> list[int]:
    uses, _ = cfg._uses_defs(insn)
    return sorted(r for r in uses if 0 <= r <= 10)


def _finish(cp: Checkpoint | None) -> None:
    while cp is not None:
        cp.branches -= 1
        if cp.branches > 0:
            return
        cp = cp.parent


def _packet_range(st: State, op: JmpOp, a: Reg, b: Reg, taken: bool) -> None:
    """``if a op b`` between a packet pointer and its end: the bytes proven on this side."""
    pairs = {(RegType.PACKET, RegType.PACKET_END), (RegType.PACKET_META, RegType.PACKET)}
    if (a.type, b.type) in pairs:
        ptr, end, ptr_is_dst = a, b, True
    elif (b.type, a.type) in pairs:
        ptr, end, ptr_is_dst = b, a, False
    else:
        return
    if end.off or not end.scalar.is_const or end.scalar.value:
        return  # data_meta is bounded by data itself, not by data + n
    # normalise to "ptr OP end"
    if not ptr_is_dst:
        op = {JmpOp.JGT: JmpOp.JLT, JmpOp.JLT: JmpOp.JGT, JmpOp.JGE: JmpOp.JLE, JmpOp.JLE: JmpOp.JGE}[op]
    holds_le = (op in (JmpOp.JLE, JmpOp.JLT)) == taken  # ptr <= end (or <) on this side
    if not holds_le or ptr.off <= 0 or ptr.scalar.umax + ptr.off > access.MAX_PACKET_OFF:
        return
    new, pid, kind = ptr.off, ptr.id, ptr.type
    st.retype(lambda r: r.type is kind and r.id == pid and r.range < new, lambda r: replace(r, range=new))


def verify_insns(insns: list[Insn], maps: dict[int, MapSpec], **kw) -> VerifierResult:
    return Verifier(insns, maps, **kw).run()
