"""The program registry both daemons answer prog/map requests from, over the interpreter engine."""

from __future__ import annotations

import errno

import pytest
from testpaths import SAMPLES_BUILD

from vxdp.engine.interp import InterpEngine
from vxdp.engine.registry import ProgramRegistry, RegistryError

XDP1 = str(SAMPLES_BUILD / "xdp1.o")


def _attach(events):
    def attach(loaded, handle):
        events.append(("attach", handle))
        return (lambda: events.append(("detach", handle))), (lambda: {"drop": 3})

    return attach


def test_load_show_maps_and_unload(samples_built):
    reg, events = ProgramRegistry(), []
    doc = reg.load("native", InterpEngine(), XDP1, attach=_attach(events))
    (prog,) = doc["programs"]
    assert prog["name"] == "xdp_prog1" and prog["attached"] and prog["counters"] == {"drop": 3}
    assert events == [("attach", prog["handle"])]
    assert [m["name"] for m in reg.show()["maps"]] == ["rxcnt"]
    assert reg.show()["maps"][0]["value_bytes"] == 8

    key6 = (6).to_bytes(4, "little").hex()
    assert reg.map_lookup("rxcnt", key6) == {"key": key6, "value": "00" * 8}
    reg.map_update("rxcnt", key6, (41).to_bytes(8, "little").hex())
    assert reg.map_lookup("rxcnt", key6)["value"] == (41).to_bytes(8, "little").hex()
    dump = reg.map_dump("rxcnt")
    assert len(dump["entries"]) == 256 and dump["entries"][6]["value"] == (41).to_bytes(8, "little").hex()
    with pytest.raises(OSError) as e:
        reg.map_delete("rxcnt", key6)  # arrays refuse delete, as in the kernel
    assert e.value.errno == errno.EINVAL
    with pytest.raises(RegistryError) as e:
        reg.map_dump("nope")
    assert e.value.errno == errno.ENOENT and "no map named 'nope'" in str(e.value)
    with pytest.raises(RegistryError):
        reg.map_update("rxcnt", key6, "00", flags="sometimes")

    assert reg.unload() == 1 and reg.show() == {"programs": [], "maps": []}
    assert events[-1] == ("detach", prog["handle"])


def test_a_failed_attach_frees_the_object_and_keeps_the_old_one(samples_built):
    reg, events = ProgramRegistry(), []
    reg.load("native", InterpEngine(), XDP1, attach=_attach(events))

    def refuse(loaded, handle):
        raise OSError(errno.EBUSY, "busy")

    engine = InterpEngine()
    with pytest.raises(OSError):
        reg.load("native", engine, XDP1, attach=refuse)
    assert engine.maps == {} and engine.programs == {}  # closed
    assert reg.show()["programs"][0]["attached"]


def test_a_replacing_load_attaches_first_and_stands_even_if_freeing_the_old_one_fails(samples_built):
    """The new object is attached before the old one is retired (its detach, then its free), and an
    error while retiring the old one does not lose the new one, which is loaded and attached."""
    reg, events = ProgramRegistry(), []

    def attach_then_fail_on_detach(loaded, handle):
        events.append(("attach", handle))

        def detach():
            events.append(("detach", handle))
            raise OSError(errno.EIO, "device gone")

        return detach, dict

    reg.load("offload", InterpEngine(), XDP1, attach=attach_then_fail_on_detach)
    old = reg.attached_handle("offload")
    doc = reg.load("offload", InterpEngine(), XDP1, attach=_attach(events))
    (new,) = [p["handle"] for p in doc["programs"] if p["attached"]]
    assert events == [("attach", old), ("attach", new), ("detach", old)]
    assert reg.attached_handle("offload") == new and reg.show()["programs"][0]["handle"] == new
    assert reg.attached_handle("native") is None


def test_map_freeze_request(samples_built):
    """``map.freeze`` (``vxdp map freeze``): later updates are EPERM, reads go on, a second freeze EPERM."""
    reg = ProgramRegistry()
    reg.load("native", InterpEngine(), XDP1, attach=_attach([]))
    key6 = (6).to_bytes(4, "little").hex()
    reg.map_update("rxcnt", key6, (5).to_bytes(8, "little").hex())
    assert not reg.map_handlers()["map.show"]()[0]["frozen"]
    assert reg.map_handlers()["map.freeze"](map="rxcnt") == {"map": "rxcnt", "frozen": True}
    assert reg.map_handlers()["map.show"]()[0]["frozen"]  # what `vxdp map show` prints
    for call_ in (lambda: reg.map_update("rxcnt", key6, "00" * 8), lambda: reg.map_freeze("rxcnt")):
        with pytest.raises(OSError) as e:
            call_()
        assert e.value.errno == errno.EPERM
    assert reg.map_lookup("rxcnt", key6)["value"] == (5).to_bytes(8, "little").hex()
    reg.unload()
