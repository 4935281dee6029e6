"""XDP attach, query and detach on a veth pair in a fresh netns, native and generic."""

from __future__ import annotations

import errno

import pytest
from kernel_asm import ret_insns

from vxdp.bpf.kernel.prog import KernelProgram
from vxdp.bpf.kernel.xdp import XdpError, XdpMode, attach_xdp, detach_xdp, query_xdp, query_xdp_attrs
from vxdp.bpf.kernel.xdp_link import XdpLink

pytestmark = pytest.mark.privileged


@pytest.mark.parametrize("mode", [XdpMode.NATIVE, XdpMode.GENERIC], ids=lambda m: m.name)
def test_attach_query_detach(veth_pair, mode):
    ns, dev = veth_pair.ns_a, veth_pair.a
    with KernelProgram.load(ret_insns(2), name="xdp_pass") as p:
        prog_id = p.info().id
        assert query_xdp(dev, netns=ns) is None
        attach_xdp(dev, p.fd, mode, netns=ns)
        try:
            assert query_xdp(dev, netns=ns) == prog_id
            assert query_xdp(veth_pair.a_index, mode, netns=ns) == prog_id  # by index, in its mode
            other = XdpMode.GENERIC if mode is XdpMode.NATIVE else XdpMode.NATIVE
            assert query_xdp(dev, other, netns=ns) is None
            expected = {"NATIVE": "xdp", "GENERIC": "xdpgeneric"}[mode.name]
            assert query_xdp_attrs(dev, netns=ns)["IFLA_XDP_ATTACHED"] == expected
            assert query_xdp(veth_pair.b, netns=ns) is None  # the peer has nothing
        finally:
            detach_xdp(dev, mode, netns=ns)
        assert query_xdp(dev, netns=ns) is None


def test_program_stays_attached_after_our_fd_closes(veth_pair):
    ns, dev = veth_pair.ns_a, veth_pair.a
    p = KernelProgram.load(ret_insns(1), name="xdp_drop")
    prog_id = p.info().id
    attach_xdp(dev, p.fd, XdpMode.NATIVE, netns=ns)
    p.close()
    try:
        assert query_xdp(dev, netns=ns) == prog_id  # the device holds its own reference
    finally:
        detach_xdp(dev, XdpMode.NATIVE, netns=ns)
    assert query_xdp(dev, netns=ns) is None


def test_replace_and_noexist(veth_pair):
    ns, dev = veth_pair.ns_a, veth_pair.a
    with KernelProgram.load(ret_insns(2), name="first") as p1, \
            KernelProgram.load(ret_insns(1), name="second") as p2:
        attach_xdp(dev, p1.fd, XdpMode.NATIVE, netns=ns)
        try:
            with pytest.raises(XdpError) as e:
                attach_xdp(dev, p2.fd, XdpMode.NATIVE, netns=ns, replace=False)
            assert e.value.errno == errno.EBUSY and dev in str(e.value)
            assert query_xdp(dev, netns=ns) == p1.info().id
            attach_xdp(dev, p2.fd, XdpMode.NATIVE, netns=ns)  # replace
            assert query_xdp(dev, netns=ns) == p2.info().id
        finally:
            detach_xdp(dev, XdpMode.NATIVE, netns=ns)


def test_errors_name_the_interface_and_netns(veth_pair):
    with KernelProgram.load(ret_insns(2), name="xdp_pass") as p:
        with pytest.raises(XdpError) as e:
            attach_xdp("nosuchdev0", p.fd, XdpMode.NATIVE, netns=veth_pair.ns_a)
        assert e.value.errno == errno.ENODEV and "nosuchdev0" in str(e.value) and veth_pair.ns_a in str(e.value)
        with pytest.raises(XdpError) as e:
            query_xdp("vxa", netns="vxk-no-such-netns")
        assert "vxk-no-such-netns" in str(e.value)


# -- XDP through a bpf_link (XdpLink) -------------------------------------------------------------

def test_link_attaches_in_the_ports_netns_and_closing_it_detaches(veth_pair):
    """The port is in another netns than the test: the link is created from a thread that entered it."""
    ns, dev, index = veth_pair.ns_a, veth_pair.a, veth_pair.a_index
    with KernelProgram.load(ret_insns(2), name="xdp_pass") as p:
        link = XdpLink.create(index, p.fd, XdpMode.NATIVE, netns=ns, label=dev)
        try:
            assert query_xdp(dev, XdpMode.NATIVE, netns=ns) == p.info().id
            info = link.info()
            assert info.prog_id == p.info().id and info.ifindex == index and info.id > 0
        finally:
            link.close()
        assert query_xdp(dev, netns=ns) is None  # the last fd closed: the kernel detached it


def test_link_update_swaps_atomically_and_checks_the_old_program(veth_pair):
    ns, dev, index = veth_pair.ns_a, veth_pair.a, veth_pair.a_index
    with KernelProgram.load(ret_insns(2), name="first") as p1, \
            KernelProgram.load(ret_insns(1), name="second") as p2, \
            XdpLink.create(index, p1.fd, netns=ns, label=dev) as link:
        link.update(p2.fd, old_prog_fd=p1.fd)
        assert query_xdp(dev, netns=ns) == p2.info().id
        with pytest.raises(XdpError) as e:
            link.update(p1.fd, old_prog_fd=p1.fd)  # it runs p2 now: the kernel refuses
        assert e.value.errno == errno.EPERM and dev in str(e.value)
        assert query_xdp(dev, netns=ns) == p2.info().id
        link.detach()
        assert query_xdp(dev, netns=ns) is None
        link.detach()  # a second detach of a defunct link is fine


def test_link_and_netlink_attachments_exclude_each_other(veth_pair):
    ns, dev, index = veth_pair.ns_a, veth_pair.a, veth_pair.a_index
    with KernelProgram.load(ret_insns(2), name="first") as p1, KernelProgram.load(ret_insns(1), name="second") as p2:
        attach_xdp(dev, p1.fd, XdpMode.NATIVE, netns=ns)
        try:
            with pytest.raises(XdpError) as e:
                XdpLink.create(index, p2.fd, netns=ns, label=dev)
            assert e.value.errno == errno.EBUSY and "already attached" in str(e.value) and dev in str(e.value)
        finally:
            detach_xdp(dev, XdpMode.NATIVE, netns=ns)
        with XdpLink.create(index, p2.fd, netns=ns, label=dev):
            with pytest.raises(XdpError) as e:
                attach_xdp(dev, p1.fd, XdpMode.NATIVE, netns=ns)
            assert e.value.errno == errno.EBUSY
            assert query_xdp(dev, netns=ns) == p2.info().id
