"""Our verifier against the kernel's: the same programs accepted, the same bugs refused.

Accepted: every sample object's programs and every ISA corpus case the kernel runs.
Refused: the ISA corpus cases the kernel refuses (with the kernel's words in our reason), and
the bad programs of `bad_programs` (assembler) and `bad_c` (clang), each a known class of bug,
which the host kernel must refuse too (checked here through BPF_PROG_LOAD), so that no case is
a bug only by our verifier's opinion.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from bad_c import BAD_C, compile_c
from bad_programs import BAD
from bad_run import kernel, ours
from testpaths import sample_objects

from vxdp.bpf.asm import assemble
from vxdp.bpf.elf import load_object
from vxdp.bpf.kernel.prog import VerifierError
from vxdp.engine.kernel import KernelEngine
from vxdp.engine.loader import load_object as load_into
from vxdp.engine.verifier import verify
from vxdp.engine.verifier.errors import VerifierRejected
from vxdp.engine.verifier.program import verify_program

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "isa"))
from isa_corpus import REFUSED, cases
from isa_run import map_specs, programs

SAMPLES = [(path, name) for path in sample_objects() for name in load_object(path).programs]
ISA = cases()
FAST_BAD = [b for b in BAD if not b.slow]
SLOW_BAD = [b for b in BAD if b.slow]
needs_clang = pytest.mark.skipif(shutil.which("clang") is None, reason="needs clang")


def _isa_verify(case):
    specs = map_specs(case)
    handles = {name: i + 1 for i, name in enumerate(specs)}
    main, targets = programs(case, handles)
    by_handle = {handles[n]: s for n, s in specs.items()}
    for t in targets:
        verify(t, by_handle)
    return verify(main, by_handle, func_info=case.btf)


def test_enough_bad_programs():
    assert len(BAD) + len(BAD_C) >= 60
    assert len({b.name for b in BAD}) == len(BAD)


@pytest.mark.parametrize("path,name", SAMPLES, ids=[f"{p.name}:{n}" for p, n in SAMPLES])
def test_sample_accepted(path, name):
    result = verify_program(load_object(path), name)
    assert result.processed > 0


def test_isa_corpus_accepted():
    refused = []
    for case in ISA:
        try:
            _isa_verify(case)
        except VerifierRejected as e:
            refused.append(f"{case.name}: {e.log}")
    assert not refused, "\n".join(refused[:5])


@pytest.mark.parametrize("reason,case", REFUSED, ids=[c.name for _, c in REFUSED])
def test_isa_refused_case_refused(reason, case):
    with pytest.raises(VerifierRejected) as e:
        _isa_verify(case)
    assert reason in e.value.reason


def _refused_by_ours(case):
    with pytest.raises(VerifierRejected) as e:
        ours(case)
    assert case.says in e.value.reason, e.value.log


@pytest.mark.parametrize("case", FAST_BAD, ids=[b.name for b in FAST_BAD])
def test_bad_program_refused(case):
    _refused_by_ours(case)


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW_BAD, ids=[b.name for b in SLOW_BAD])
def test_bad_program_refused_slow(case):
    _refused_by_ours(case)


@pytest.mark.privileged
@pytest.mark.parametrize("case", FAST_BAD, ids=[b.name for b in FAST_BAD])
def test_bad_program_refused_by_kernel(case):
    with pytest.raises(VerifierError):
        kernel(case)


@pytest.mark.slow
@pytest.mark.privileged
@pytest.mark.parametrize("case", SLOW_BAD, ids=[b.name for b in SLOW_BAD])
def test_bad_program_refused_by_kernel_slow(case):
    with pytest.raises(VerifierError):
        kernel(case)


@needs_clang
@pytest.mark.parametrize("case", BAD_C, ids=[c.name for c in BAD_C])
def test_bad_c_refused(case, tmp_path):
    obj = load_object(compile_c(case, tmp_path))
    with pytest.raises(VerifierRejected) as e:
        verify_program(obj)
    assert case.says in e.value.reason, e.value.log


@needs_clang
@pytest.mark.privileged
@pytest.mark.parametrize("case", BAD_C, ids=[c.name for c in BAD_C])
def test_bad_c_refused_by_kernel(case, tmp_path):
    obj = load_object(compile_c(case, tmp_path))
    with pytest.raises(VerifierError):
        load_into(KernelEngine(), obj)


def test_refusal_log_names_insn_text_registers_and_reason():
    text = ("r2 = *(u32 *)(r1 +0)\nr3 = *(u32 *)(r1 +4)\nr4 = r2\nr4 += 14\nr0 = 2\n"
            "if r4 > r3 goto +1\nr5 = *(u8 *)(r2 +14)\nexit")
    with pytest.raises(VerifierRejected) as e:
        verify(assemble(text), {})
    err = e.value
    assert err.insn == 6
    lines = err.log.splitlines()
    assert lines[0] == "6: (71) r5 = *(u8 *)(r2 +14)"
    assert "R2=pkt(r=14)" in lines[1]
    assert lines[-1] == err.reason
    assert "off=14 size=1" in err.reason


def test_array_lookup_with_constant_key_is_not_null_but_out_of_range_key_is():
    """As the kernel (6.x): a constant key below max_entries makes the lookup's value non-NULL."""
    def prog(key: int) -> str:
        return (f"r1 = map[fd:1] ll\nr2 = {key}\n*(u32 *)(r10 -4) = r2\nr2 = r10\nr2 += -4\n"
                "call bpf_map_lookup_elem\nr1 = *(u64 *)(r0 +0)\nr0 = 2\nexit")
    from bad_programs import MAPS
    maps = {1: MAPS["arr"]}
    verify(assemble(prog(0)), maps)
    with pytest.raises(VerifierRejected, match="map_value_or_null"):
        verify(assemble(prog(7)), maps)


def test_strict_mode_refuses_what_only_root_may_do():
    """Unprivileged rules: reading never-written stack and returning a pointer are refused."""
    assert verify(assemble("r0 = *(u64 *)(r10 -8)\nexit"), {}).processed == 2
    with pytest.raises(VerifierRejected, match="invalid read from stack"):
        verify(assemble("r0 = *(u64 *)(r10 -8)\nexit"), {}, privileged=False)
    with pytest.raises(VerifierRejected, match="leaks addr"):
        verify(assemble("r0 = r1\nexit"), {}, privileged=False)
