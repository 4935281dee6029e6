"""What the verifier hands back: `VerifierResult` for an accepted program, `VerifierRejected` otherwise.

A refusal names one instruction and says why in one line, with the registers
that instruction reads, so the person reading it can find the line in
``vxdp prog disasm`` output and see which value the verifier could not prove safe.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class VerifierRejected(Exception):
    """The program is not provably safe. ``insn`` is the slot index, ``reason`` the one-line cause,
    ``log`` the whole text: instruction, registers, reason."""

    def __init__(self, insn: int, reason: str, log: str):
        super().__init__(log)
        self.insn = insn
        self.reason = reason
        self.log = log


@dataclass
class VerifierResult:
    """An accepted program: how much work it took, and the stack each function needs."""

    processed: int  # instructions walked, as the kernel's "processed N insns"
    states: int  # states kept for pruning
    stack_depth: dict[int, int] = field(default_factory=dict)  # function start -> bytes of stack used

    def summary(self) -> str:
        depths = ", ".join(f"{d}" for _, d in sorted(self.stack_depth.items()))
        return f"processed {self.processed} insns, {self.states} states, stack depth {depths or 0}"
