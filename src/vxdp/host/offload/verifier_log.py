"""The host verifier's log, told in the guest program's instruction numbers. Pure: text in, text out.

Why: the kernel verifies the host's copy of a program, which `rewrite.add_action_counters`
made longer: the action-counting epilogue sits after the main function, so
every later slot (each subprogram) moved by the epilogue's length, a call
from the main function into a subprogram carries a larger offset, and each
``exit`` of the main function became a jump to the epilogue. A guest reading
"20: (71) r0 = *(u8 *)(r2 +0)" must find instruction 20 in *its* program,
which is where its disassembler and its line info put it. So the log that goes
back to the guest has its numbers mapped back:

- instruction indexes where the verifier prints them (``N:`` at a line's start,
  ``from [insn] N to M``, ``before N:``, ``insn N``, ``first_idx``/``last_idx``, ``@N``,
  the branch target's state after ``goto pc+K N:``);
- pc-relative targets (``goto pc+N``, ``call pc+N``) recomputed between the
  mapped ends, and a jump to the epilogue's start shown as the ``exit`` the
  guest wrote;
- slots of the epilogue itself (the verifier walks it too) as ``E0``, ``E1``...

A first line says so. Text we do not recognise is left as it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PC_REL = re.compile(r"^(\d+): \((\w\w)\) (.*?)\b(goto|gotol|call) pc([+-]\d+)")
_INDEXES = re.compile(r"^(\d+)(?=:)|\bfrom (?:insn )?(\d+) to (\d+)\b|\bbefore (\d+)(?=:)|\binsn (\d+)\b"
                      r"|\b(?:first|last)_idx (\d+)\b|@(\d+)\b|\bpc[+-]\d+ (\d+)(?=:)")


@dataclass(frozen=True)
class EpilogueMap:
    """Where the host's copy differs from the guest's: ``length`` slots inserted at ``start``."""

    start: int
    length: int

    def guest(self, host: int) -> int | None:
        """The guest's index of host slot ``host``; None inside the epilogue."""
        if host < self.start:
            return host
        if host < self.start + self.length:
            return None
        return host - self.length

    def label(self, host: int) -> str:
        g = self.guest(host)
        return str(g) if g is not None else f"E{host - self.start}"


def _pc_relative(line: str, m: EpilogueMap) -> str:
    hit = _PC_REL.match(line)
    if hit is None:
        return line
    at, target = int(hit.group(1)), int(hit.group(1)) + 1 + int(hit.group(5))
    g_at, g_target = m.guest(at), m.guest(target)
    if g_at is None:
        return line  # inside the epilogue: its own jumps, labelled below
    if target == m.start and hit.group(4) in ("goto", "gotol") and hit.group(2) in ("05", "06"):
        return f"{at}: (95) exit" + line[hit.end():]  # a main-function exit, routed through the epilogue
    if g_target is None:
        return line
    return line[:hit.start(5)] + f"{g_target - (g_at + 1):+d}" + line[hit.end(5):]


def guest_log(log: str, m: EpilogueMap) -> str:
    """``log`` with the host copy's instruction numbers turned into the guest program's (module docstring)."""
    if not log or m.length == 0:
        return log
    out = [(f"; vxdp: instruction numbers are the guest program's; E0..E{m.length - 1} are the host's "
            f"action-counting epilogue, after instruction {m.start - 1}, where the main function's exits go")]
    for line in log.splitlines():
        line = _pc_relative(line, m)
        out.append(_INDEXES.sub(lambda hit: _relabel(hit, m), line))
    return "\n".join(out) + ("\n" if log.endswith("\n") else "")


def _relabel(hit: re.Match[str], m: EpilogueMap) -> str:
    text, base = hit.group(0), hit.start()
    pieces, pos = [], 0
    for g in range(1, len(hit.groups()) + 1):
        if hit.group(g) is not None:
            pieces += [text[pos:hit.start(g) - base], m.label(int(hit.group(g)))]
            pos = hit.end(g) - base
    return "".join(pieces) + text[pos:]
