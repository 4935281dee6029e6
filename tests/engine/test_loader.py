"""`load_object` prepares global data as libbpf does: ``.rodata`` is written, then frozen, then
programs load, so the verifier sees ``const volatile`` configuration as constants."""

from __future__ import annotations

import dataclasses
import errno

import pytest
from testpaths import SAMPLES_BUILD

from vxdp.bpf.elf import load_object as parse_object
from vxdp.bpf.kernel.prog import VerifierError
from vxdp.bpf.mapspec import MapOrigin
from vxdp.engine.interp.engine import InterpEngine
from vxdp.engine.kernel import KernelEngine
from vxdp.engine.loader import load_object

RODATA_CONFIG = SAMPLES_BUILD / "corpus" / "rodata_config.o"
XDP_PASS, XDP_DROP = 2, 1


@pytest.mark.privileged
def test_kernel_engine_freezes_rodata_before_the_program_loads():
    obj = parse_object(str(RODATA_CONFIG))
    with load_object(KernelEngine(), obj) as loaded:
        rodata = loaded.maps[".rodata"]
        assert rodata.frozen
        with pytest.raises(OSError) as e:
            rodata.update(bytes(4), bytes(rodata.spec.value_size))
        assert e.value.errno == errno.EPERM
        assert loaded.run(bytes(64)).action == XDP_PASS
        assert loaded.run(bytes(20)).action == XDP_DROP


@pytest.mark.privileged
def test_the_same_object_with_rodata_not_frozen_is_refused_by_the_verifier():
    """The sample depends on the freeze: with its config map left writable (as an offload without
    MAP_FREEZE made it) the dead branch is verified and its unchecked packet read refused."""
    obj = parse_object(str(RODATA_CONFIG))
    spec = obj.maps[".rodata"]
    obj.maps[".rodata"] = dataclasses.replace(spec, origin=MapOrigin.DATA, flags=0)
    with pytest.raises(VerifierError) as e:
        load_object(KernelEngine(), obj)
    assert e.value.errno == errno.EACCES
    assert "invalid access to packet" in e.value.log


def test_interp_engine_freezes_rodata_too():
    with load_object(InterpEngine(), parse_object(str(RODATA_CONFIG))) as loaded:
        with pytest.raises(OSError) as e:
            loaded.maps[".rodata"].update(bytes(4), bytes(12))
        assert e.value.errno == errno.EPERM
        assert loaded.run(bytes(64)).action == XDP_PASS
