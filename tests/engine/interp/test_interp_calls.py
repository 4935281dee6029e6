"""may_goto and bpf_loop in the interpreter, where the kernel cannot show them: a may_goto count
that runs out, and callbacks that never return or are handed something that is not a function.
(What the kernel can show, tests/engine/isa compares with it.)"""

from __future__ import annotations

from vxdp.bpf.asm import assemble

PACKET = bytes(64)


def _run(interp, text: str):
    return interp.run(interp.load_program("p", assemble(text)), PACKET)


def test_may_goto_jumps_once_its_count_runs_out(interp):
    interp.machine.MAX_LOOPS = 3
    r = _run(interp, "r0 = 0\nl:\nmay_goto +2\nr0 += 1\ngoto l\nexit")
    assert (r.fault, r.action) == (None, 3)
    # the count is per run: a second run counts from MAX_LOOPS again
    assert _run(interp, "r0 = 0\nl:\nmay_goto +2\nr0 += 1\ngoto l\nexit").action == 3


LOOP = "r1 = {nr}\nr2 = {fn}\nr3 = 0\nr4 = 0\ncall bpf_loop\nexit\ncb:\n{cb}\nexit"


def test_bpf_loop_counts_calls_and_keeps_callee_saved_registers(interp):
    text = ("r6 = 40\nr1 = 5\nr2 = func[cb] ll\nr3 = 0\nr4 = 0\ncall bpf_loop\nr0 += r6\nexit\n"
            "cb:\nr6 = 1\nr0 = 0\nexit")
    r = _run(interp, text)
    assert (r.fault, r.action) == (None, 45)


def test_bpf_loop_wants_a_function_address(interp):
    r = _run(interp, LOOP.format(nr=1, fn="r10", cb="r0 = 0"))
    assert r.action == 0 and "not a function address" in r.fault


def test_a_callback_that_never_returns_ends_in_a_fault(interp):
    interp.budget = 10_000
    r = _run(interp, LOOP.format(nr=1, fn="func[cb] ll", cb="r0 = 0\nl:\ngoto l"))
    assert r.action == 0 and "budget" in r.fault
