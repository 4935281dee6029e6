import pytest

from vxdp.virtio.features import Feature, FeatureError, check_dependencies, has, names, negotiate
from vxdp.virtio.net import (
    HDR_LEN,
    HDR_LEN_LEGACY,
    GsoType,
    HdrFlags,
    LinkStatus,
    NetConfig,
    NetError,
    NetHeader,
    ctrl_queue,
    header_len,
    mac_str,
    parse_mac,
    rx_queue,
    tx_queue,
)


def test_feature_bit_numbers_match_the_spec():
    assert (Feature.VERSION_1, Feature.NET_MRG_RXBUF, Feature.NET_CTRL_VQ, Feature.RING_EVENT_IDX,
            Feature.RING_INDIRECT_DESC, Feature.PROTOCOL_FEATURES, Feature.NET_MAC, Feature.NET_MTU,
            Feature.NET_STATUS) == (32, 15, 17, 29, 28, 30, 5, 3, 16)
    assert Feature.mask(Feature.VERSION_1, Feature.NET_MAC) == (1 << 32) | (1 << 5)
    assert names(Feature.VERSION_1.bit | (1 << 45)) == ["VERSION_1", "bit45"]
    assert names(Feature.VERSION_1.bit | (1 << 58)) == ["VERSION_1", "NET_BPF_OFFLOAD"]  # vxdp's experimental bit


def test_negotiate_takes_the_intersection():
    offered = Feature.mask(Feature.VERSION_1, Feature.NET_MAC, Feature.NET_MRG_RXBUF, Feature.NET_STATUS)
    wanted = Feature.mask(Feature.VERSION_1, Feature.NET_MRG_RXBUF, Feature.RING_EVENT_IDX)
    got = negotiate(offered, wanted)
    assert got == Feature.mask(Feature.VERSION_1, Feature.NET_MRG_RXBUF)


def test_negotiate_drops_features_whose_dependency_is_gone():
    offered = Feature.mask(Feature.VERSION_1, Feature.NET_CTRL_MAC_ADDR, Feature.NET_MQ, Feature.NET_HOST_TSO4,
                           Feature.NET_CSUM)
    wanted = Feature.mask(Feature.VERSION_1, Feature.NET_CTRL_MAC_ADDR, Feature.NET_MQ, Feature.NET_HOST_TSO4)
    got = negotiate(offered, wanted)  # no CTRL_VQ offered, CSUM not wanted
    assert got == Feature.VERSION_1.bit
    with pytest.raises(FeatureError, match="NET_CTRL_VQ"):
        check_dependencies(Feature.mask(Feature.NET_MQ))
    check_dependencies(Feature.mask(Feature.NET_MQ, Feature.NET_CTRL_VQ))


def test_negotiate_requires_version_1():
    with pytest.raises(FeatureError, match="VERSION_1"):
        negotiate(Feature.NET_MAC.bit, Feature.NET_MAC.bit)
    assert has(negotiate(Feature.VERSION_1.bit, 0), Feature.VERSION_1)


def test_header_len_by_features():
    assert header_len(Feature.VERSION_1.bit) == HDR_LEN == 12
    assert header_len(Feature.NET_MRG_RXBUF.bit) == 12
    assert header_len(0) == HDR_LEN_LEGACY == 10


def test_header_roundtrip_and_layout():
    h = NetHeader(HdrFlags.NEEDS_CSUM, GsoType.TCPV4, 54, 1448, 34, 16, 3)
    raw = h.encode()
    assert raw == bytes([1, 1, 54, 0, 0xA8, 0x05, 34, 0, 16, 0, 3, 0])
    assert NetHeader.decode(raw) == h
    legacy = h.encode(HDR_LEN_LEGACY)
    assert len(legacy) == 10 and NetHeader.decode(legacy, HDR_LEN_LEGACY).num_buffers == 1
    with pytest.raises(NetError, match="truncated"):
        NetHeader.decode(raw[:11])
    with pytest.raises(NetError):
        h.encode(11)


def test_config_space_layout():
    c = NetConfig(mac=bytes.fromhex("525400abcdef"), status=LinkStatus.LINK_UP, max_virtqueue_pairs=1, mtu=1500)
    raw = c.encode()
    assert raw[:6] == bytes.fromhex("525400abcdef")
    assert raw[6:8] == b"\x01\x00" and raw[8:10] == b"\x01\x00" and raw[10:12] == (1500).to_bytes(2, "little")
    assert NetConfig.decode(raw) == c
    assert NetConfig.decode(raw[:12]).mtu == 1500
    assert c.read(6, 2) == b"\x01\x00"
    with pytest.raises(NetError):
        c.read(10, 20)
    with pytest.raises(NetError, match="truncated"):
        NetConfig.decode(raw[:8])
    with pytest.raises(NetError, match="mtu"):
        NetConfig(mtu=10)


def test_queue_indexes_and_mac_text():
    assert (rx_queue(0), tx_queue(0), ctrl_queue(1)) == (0, 1, 2)
    assert (rx_queue(1), tx_queue(1), ctrl_queue(2)) == (2, 3, 4)
    assert mac_str(parse_mac("52:54:00:12:34:56")) == "52:54:00:12:34:56"
    for bad in ["52:54:00:12:34", "52:54:00:12:34:zz", "52:54:00:12:34:100"]:
        with pytest.raises(NetError):
            parse_mac(bad)
