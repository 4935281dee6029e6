"""The program registry both daemons answer prog/map requests from, over the interpreter engine."""

from __future__ import annotations

import errno

import pytest
from testpaths import SAMPLES_BUILD

from vxdp.bpf.mapspec import MapSpec, MapType
from vxdp.engine.interp.engine import InterpEngine
from vxdp.engine.registry import ProgramRegistry, RecordedMap, RecordedProgram, RegistryError

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


# -- the offload slot read from the device's record ------------------------------------------------

class FakeRecord:
    """A device's table: programs and maps whoever made them (`DeviceRecord`)."""

    def __init__(self, progs: list[RecordedProgram], maps: list[RecordedMap]):
        self.progs, self.maps, self.cleared = progs, maps, 0

    def objects(self):
        return list(self.progs), list(self.maps)

    def counters(self):
        return {"pass": 5}

    def clear(self) -> int:
        n = len(self.progs) + len(self.maps)
        self.progs, self.maps = [], []
        self.cleared += 1
        return n


def _array(engine: InterpEngine, name: str):
    return engine.create_map(MapSpec(name, MapType.ARRAY, 4, 8, 4))


def test_offload_views_read_the_device_record_whoever_made_the_objects(samples_built):
    device = InterpEngine()
    rec = FakeRecord([], [])
    reg = ProgramRegistry(record=lambda mode: rec if mode == "offload" else None)
    loaded = reg.load("offload", InterpEngine(), XDP1, attach=_attach([]))
    (own,) = loaded["programs"]
    imported = _array(device, "seen")
    rec.progs = [RecordedProgram(own["handle"], "xdp_prog1", False, 20, "aa" * 8, "guest"),
                 RecordedProgram(90, "xdp_entry", True, 12, "bb" * 8, "import")]
    rec.maps = [RecordedMap("seen", imported, "import")]
    shown = reg.show()
    assert [(p["handle"], p["origin"], p["attached"], p.get("object")) for p in shown["programs"]] == [
        (own["handle"], "guest", False, XDP1), (90, "import", True, None)]
    assert shown["programs"][1]["counters"] == {"pass": 5}  # the attached one's, from the device
    assert [(m["name"], m["origin"], m["mode"]) for m in shown["maps"]] == [("seen", "import", "offload")]
    # maps by name are the device's: the registry's own rxcnt is not in the record, so not found
    key = (1).to_bytes(4, "little").hex()
    reg.map_update("seen", key, (7).to_bytes(8, "little").hex())
    assert imported.lookup(bytes.fromhex(key)) == (7).to_bytes(8, "little")
    assert reg.map_dump("seen")["entries"][1]["value"] == (7).to_bytes(8, "little").hex()
    with pytest.raises(RegistryError) as e:
        reg.map_dump("rxcnt")
    assert e.value.errno == errno.ENOENT
    # detach frees what the device holds, so the device is empty (a re-import works)
    assert reg.detach() == 1 and rec.cleared == 1 and reg.show() == {"programs": [], "maps": []}
    assert reg.detach() == 0


def test_two_maps_of_one_name_on_the_device_are_ambiguous_until_named_by_handle():
    device = InterpEngine()
    a, b = _array(device, "rxcnt"), _array(device, "rxcnt")
    rec = FakeRecord([], [RecordedMap("rxcnt", a, "guest"), RecordedMap("rxcnt", b, "operator")])
    reg = ProgramRegistry(record=lambda mode: rec if mode == "offload" else None)
    for call_ in (lambda: reg.map_dump("rxcnt"), lambda: reg.map_info("rxcnt"),
                  lambda: reg.map_update("rxcnt", "00" * 4, "00" * 8)):
        with pytest.raises(RegistryError) as e:
            call_()
        assert e.value.errno == errno.EINVAL
        assert f"handles {a.handle}, {b.handle}" in str(e.value) and "id:" in str(e.value)
    reg.map_update(f"id:{b.handle}", "01000000", (3).to_bytes(8, "little").hex())
    assert b.lookup((1).to_bytes(4, "little")) == (3).to_bytes(8, "little") and not any(
        a.lookup((1).to_bytes(4, "little")))
    assert reg.map_info(f"id:{a.handle}")["handle"] == a.handle
    with pytest.raises(RegistryError, match="no map with handle 999"):
        reg.map_dump("id:999")


def test_a_device_that_cannot_list_falls_back_to_the_own_slot_and_says_so(samples_built, caplog):
    reason = "the device speaks offload protocol 1.1, which cannot list its objects"
    reg = ProgramRegistry(record=lambda mode: reason if mode == "offload" else None)
    reg.load("offload", InterpEngine(), XDP1, attach=_attach([]))
    with caplog.at_level("WARNING"):
        shown = reg.show()
        reg.show()
    assert [p["name"] for p in shown["programs"]] == ["xdp_prog1"] and shown["notes"] == [f"offload: {reason}"]
    assert [r.getMessage() for r in caplog.records].count(f"offload slot: {reason}") == 1  # said once
    assert reg.map_info("rxcnt")["name"] == "rxcnt"
    assert reg.detach("offload") == 1 and reg.show()["programs"] == []


def test_detach_with_a_record_does_not_trip_on_a_slot_somebody_else_already_freed(samples_built):
    """The operator freed the device (or replaced our program): our slot's own detach would answer ENOENT;
    detach frees what the device holds now and forgets the slot, without an error."""
    rec = FakeRecord([], [])
    reg = ProgramRegistry(record=lambda mode: rec if mode == "offload" else None)

    def attach(loaded, handle):
        def gone() -> None:
            raise OSError(errno.ENOENT, "attach point RX: no program attached")
        return gone, dict

    reg.load("offload", InterpEngine(), XDP1, attach=attach)
    assert reg.detach("offload") == 1 and rec.cleared == 1 and reg.slots == {}
