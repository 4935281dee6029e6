"""NetLab: namespaces and veth pairs that carry traffic and always go away."""

from __future__ import annotations

import socket
import subprocess

import pytest
from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns

from vxdp.testing.netns import NetLab, NetnsError, check_test_cidr


def _udp_roundtrip(lab: NetLab, ns_rx: str, ns_tx: str, dst: str) -> bytes:
    rx = lab.run(ns_rx, socket.socket, socket.AF_INET, socket.SOCK_DGRAM)  # made inside ns_rx
    try:
        rx.bind((dst, 9999))
        rx.settimeout(10)
        tx = lab.run(ns_tx, socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
        with tx:
            tx.sendto(b"vxdp-netlab", (dst, 9999))
        return rx.recv(100)
    finally:
        rx.close()


@pytest.mark.privileged
def test_veth_between_namespaces_carries_traffic_and_is_removed():
    with NetLab() as lab:
        a, b = lab.netns(), lab.netns()
        pair = lab.veth(a, b, addr_a="198.18.3.1/30", addr_b="198.18.3.2/30", mtu=1400)
        assert pair.ns_a == a and pair.ns_b == b and pair.a_index > 0 and pair.b_index > 0
        assert _udp_roundtrip(lab, b, a, "198.18.3.2") == b"vxdp-netlab"
        with IPRoute(netns=b, flags=0) as ip:
            assert ip.get_links(pair.b_index)[0].get_attr("IFLA_MTU") == 1400
        names = list(lab.namespaces)
    assert not set(names) & set(pr_netns.listnetns())


@pytest.mark.privileged
def test_bridge_forwards_between_its_ports_and_goes_with_its_namespace():
    with NetLab() as lab:
        a, hub, b = lab.netns(), lab.netns(), lab.netns()
        lab.veth(a, hub, "vxa", "vxha", addr_a="198.18.4.1/24")
        lab.veth(b, hub, "vxb", "vxhb", addr_a="198.18.4.2/24")
        index = lab.bridge(hub, "vxbr", ("vxha", "vxhb"))
        with IPRoute(netns=hub, flags=0) as ip:
            masters = {link.get_attr("IFLA_IFNAME"): link.get_attr("IFLA_MASTER") for link in ip.get_links()}
        assert masters["vxha"] == masters["vxhb"] == index
        assert _udp_roundtrip(lab, b, a, "198.18.4.2") == b"vxdp-netlab"  # a to b, across the bridge
        with pytest.raises(NetnsError, match="nosuchport"):
            lab.bridge(hub, "vxbr2", ("nosuchport",))


@pytest.mark.privileged
def test_teardown_after_a_failure_and_a_veth_end_in_our_namespace():
    names: list[str] = []
    with pytest.raises(RuntimeError), NetLab() as lab:
        ns = lab.netns()
        names.append(ns)
        lab.veth(None, ns, "vxlab0", "vxlab1", addr_a="198.18.3.5/30", addr_b="198.18.3.6/30")
        with IPRoute() as ip:
            assert ip.link_lookup(ifname="vxlab0")
        raise RuntimeError("the test failed")
    assert names[0] not in pr_netns.listnetns()
    with IPRoute() as ip:
        assert not ip.link_lookup(ifname="vxlab0")


@pytest.mark.privileged
def test_link_errors_name_what_failed():
    with NetLab() as lab:
        ns = lab.netns()
        lab.veth(ns, ns, "dup0", "dup1")
        with pytest.raises(NetnsError, match="dup0"):
            lab.veth(ns, ns, "dup0", "dup2")


def test_only_the_benchmarking_range_is_accepted():
    assert str(check_test_cidr("198.19.255.1/24").ip) == "198.19.255.1"
    for bad, msg in [("10.0.0.1/24", "outside"), ("198.20.0.1/24", "outside"), ("198.18.0.1", "prefix"),
                     ("nonsense", "bad address")]:
        with pytest.raises(NetnsError, match=msg):
            check_test_cidr(bad)
    with NetLab() as lab, pytest.raises(NetnsError, match="IFNAMSIZ|characters"):
        lab.veth(None, None, "x" * 16, "y")
    with pytest.raises(NetnsError, match="prefix"):
        NetLab(prefix="has space")


def test_a_namespace_without_ipv6_has_it_off_for_present_and_future_links():
    def disabled(ns: str, key: str) -> str:
        return subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-n", f"net.ipv6.conf.{key}.disable_ipv6"],
                              check=True, capture_output=True, text=True).stdout.strip()

    with NetLab("vxt6") as lab:
        quiet, normal = lab.netns(ipv6=False), lab.netns()
        pair = lab.veth(quiet, normal, "vx6a", "vx6b")  # created after: conf.default applies to it
        assert [disabled(quiet, k) for k in ("all", "default", pair.a)] == ["1", "1", "1"]
        assert [disabled(normal, k) for k in ("all", "default", pair.b)] == ["0", "0", "0"]
