"""The per-device handle table: numbers > 0, never reused, kind and device checked."""

from __future__ import annotations

import errno

import pytest

from vxdp.host.offload.errors import OffloadError
from vxdp.host.offload.handles import HandleTable, Kind


def test_handles_count_up_from_one_and_are_never_reused():
    t = HandleTable("dev0")
    a, b = t.add(Kind.MAP, "m"), t.add(Kind.PROG, "p")
    assert (a, b) == (1, 2)
    t.remove(a)
    c = t.add(Kind.MAP, "m2")
    assert c == 3
    assert t.get(c, Kind.MAP) == "m2" and t.get(b, Kind.PROG) == "p"
    t.clear()
    assert len(t) == 0 and t.add(Kind.MAP, "x") == 4  # a reset does not restart the numbers


def test_wrong_kind_and_unknown_handles_are_ebadf_with_the_device_named():
    t = HandleTable("dev0")
    m = t.add(Kind.MAP, "m")
    with pytest.raises(OffloadError) as e:
        t.get(m, Kind.PROG)
    assert e.value.errno == errno.EBADF
    assert str(e.value) == "handle 1 is not a program of device dev0 (it is a map)"
    with pytest.raises(OffloadError) as e:
        t.get(3, Kind.MAP)
    assert str(e.value) == "handle 3 is not a map of device dev0"
    with pytest.raises(OffloadError):
        t.remove(3)


def test_another_devices_handle_is_refused():
    dev0, dev1 = HandleTable("dev0"), HandleTable("dev1")
    dev1.add(Kind.MAP, "a")
    h = dev1.add(Kind.MAP, "b")
    with pytest.raises(OffloadError, match=f"handle {h} is not a map of device dev0"):
        dev0.get(h, Kind.MAP)


def test_wraparound_skips_live_handles():
    t = HandleTable("dev0")
    first = t.add(Kind.MAP, "keep")
    t._next = 0xFFFFFFFF
    assert t.add(Kind.MAP, "last") == 0xFFFFFFFF
    assert t.add(Kind.MAP, "wrapped") == 2  # 1 is live, 0 is never a handle
    assert t.get(first, Kind.MAP) == "keep"


def test_entries_in_creation_order():
    t = HandleTable("d")
    for i in range(5):
        t.add(Kind.MAP if i % 2 else Kind.PROG, i)
    assert [e.obj for e in t.entries(Kind.PROG)] == [0, 2, 4]
    assert t.count(Kind.MAP) == 2


def test_a_chosen_handle_moves_the_counter_past_it():
    t = HandleTable("dev0")
    assert t.add(Kind.MAP, "m", 7) == 7 and t.get(7, Kind.MAP) == "m"
    assert t.add(Kind.PROG, "p") == 8  # past the imported one
    with pytest.raises(OffloadError, match="handle 7 is already in use") as e:
        t.add(Kind.PROG, "q", 7)
    assert e.value.errno == errno.EEXIST
    with pytest.raises(OffloadError, match="outside"):
        t.add(Kind.MAP, "z", 0)
    t.advance(3)  # never backwards
    assert t.next_handle == 9
