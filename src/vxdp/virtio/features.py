"""Feature bits of virtio 1.x (device-independent and virtio-net) and their negotiation.

Bit numbers, not masks: the spec numbers them, vhost-user carries them as a
u64 mask, and ``Feature.mask(...)`` turns one into the other. Device-specific
bits are 0..23 and 50..63, the transport/ring bits 24..41 (spec §6), and
bit 30 is taken by vhost-user for VHOST_USER_F_PROTOCOL_FEATURES.
"""

from __future__ import annotations

from enum import IntEnum


class Feature(IntEnum):
    # virtio-net (spec §5.1.3)
    NET_CSUM = 0
    NET_GUEST_CSUM = 1
    NET_CTRL_GUEST_OFFLOADS = 2
    NET_MTU = 3
    NET_MAC = 5
    NET_GUEST_TSO4 = 7
    NET_GUEST_TSO6 = 8
    NET_GUEST_ECN = 9
    NET_GUEST_UFO = 10
    NET_HOST_TSO4 = 11
    NET_HOST_TSO6 = 12
    NET_HOST_ECN = 13
    NET_HOST_UFO = 14
    NET_MRG_RXBUF = 15
    NET_STATUS = 16
    NET_CTRL_VQ = 17
    NET_CTRL_RX = 18
    NET_CTRL_VLAN = 19
    NET_CTRL_RX_EXTRA = 20
    NET_GUEST_ANNOUNCE = 21
    NET_MQ = 22
    NET_CTRL_MAC_ADDR = 23
    NET_NOTF_COAL = 53
    NET_GUEST_USO4 = 54
    NET_GUEST_USO6 = 55
    NET_HOST_USO = 56
    NET_HASH_REPORT = 57
    NET_GUEST_HDRLEN = 59
    NET_RSS = 60
    NET_RSC_EXT = 61
    NET_STANDBY = 62
    NET_SPEED_DUPLEX = 63
    # transport / ring (spec §6)
    NOTIFY_ON_EMPTY = 24  # legacy
    LOG_ALL = 26  # vhost: dirty logging
    ANY_LAYOUT = 27  # legacy
    RING_INDIRECT_DESC = 28
    RING_EVENT_IDX = 29
    PROTOCOL_FEATURES = 30  # vhost-user: VHOST_USER_F_PROTOCOL_FEATURES
    VERSION_1 = 32
    ACCESS_PLATFORM = 33
    RING_PACKED = 34
    IN_ORDER = 35
    ORDER_PLATFORM = 36
    SR_IOV = 37
    NOTIFICATION_DATA = 38
    NOTIF_CONFIG_DATA = 39
    RING_RESET = 40

    @property
    def bit(self) -> int:
        return 1 << int(self)

    @staticmethod
    def mask(*features: Feature) -> int:
        m = 0
        for f in features:
            m |= 1 << int(f)
        return m


class FeatureError(Exception):
    """A feature set that cannot be negotiated (a required bit missing, a dependency unmet)."""


# Dependencies the spec states (§5.1.3.1 and §6): a feature needs all of these.
DEPENDS: dict[Feature, tuple[Feature, ...]] = {
    Feature.NET_GUEST_TSO4: (Feature.NET_GUEST_CSUM,),
    Feature.NET_GUEST_TSO6: (Feature.NET_GUEST_CSUM,),
    Feature.NET_GUEST_ECN: (Feature.NET_GUEST_TSO4,),
    Feature.NET_GUEST_UFO: (Feature.NET_GUEST_CSUM,),
    Feature.NET_HOST_TSO4: (Feature.NET_CSUM,),
    Feature.NET_HOST_TSO6: (Feature.NET_CSUM,),
    Feature.NET_HOST_ECN: (Feature.NET_HOST_TSO4,),
    Feature.NET_HOST_UFO: (Feature.NET_CSUM,),
    Feature.NET_CTRL_RX: (Feature.NET_CTRL_VQ,),
    Feature.NET_CTRL_VLAN: (Feature.NET_CTRL_VQ,),
    Feature.NET_GUEST_ANNOUNCE: (Feature.NET_CTRL_VQ,),
    Feature.NET_MQ: (Feature.NET_CTRL_VQ,),
    Feature.NET_CTRL_MAC_ADDR: (Feature.NET_CTRL_VQ,),
    Feature.NET_CTRL_RX_EXTRA: (Feature.NET_CTRL_RX,),
    Feature.NET_NOTF_COAL: (Feature.NET_CTRL_VQ,),
    Feature.NET_RSS: (Feature.NET_CTRL_VQ,),
    Feature.NET_HASH_REPORT: (Feature.NET_CTRL_VQ,),
}


class Experimental(IntEnum):
    """Bits no virtio spec assigns that vxdp uses, kept out of `Feature` (the spec's list)."""

    # VIRTIO_NET_F_BPF_OFFLOAD (docs/offload-protocol.md §1): unassigned in virtio-v1.4-cs01, below 64 for
    # vhost-user's u64 masks. Tested like any feature: ``has(mask, Experimental.NET_BPF_OFFLOAD)``.
    NET_BPF_OFFLOAD = 58

    @property
    def bit(self) -> int:
        return 1 << int(self)


def names(mask: int) -> list[str]:
    """The names of the bits set in ``mask`` (unknown bits as ``bit<N>``), for logs and errors."""
    out = []
    for b in range(64):
        if mask >> b & 1:
            try:
                out.append(Feature(b).name)
            except ValueError:
                out.append(Experimental(b).name if b in set(Experimental) else f"bit{b}")
    return out


def has(mask: int, feature: Feature | Experimental) -> bool:
    return bool(mask >> int(feature) & 1)


def check_dependencies(mask: int) -> None:
    """FeatureError naming the first feature in ``mask`` whose dependency is not in ``mask``."""
    for f, deps in DEPENDS.items():
        if has(mask, f):
            for d in deps:
                if not has(mask, d):
                    raise FeatureError(f"feature {f.name} needs {d.name}, which is not negotiated")


def negotiate(offered: int, wanted: int, required: int = Feature.VERSION_1.bit) -> int:
    """The driver's choice: ``offered & wanted``, with dependencies closed and ``required`` present.

    A wanted feature whose dependency did not survive is dropped (the driver
    must not accept it, spec §5.1.3.1); a ``required`` bit the device did not
    offer is a FeatureError (we drive only virtio 1.x devices).
    """
    if offered < 0 or wanted < 0 or offered > 0xFFFF_FFFF_FFFF_FFFF:
        raise FeatureError(f"feature masks must be u64 (offered {offered:#x}, wanted {wanted:#x})")
    missing = required & ~offered
    if missing:
        raise FeatureError(f"device does not offer required features {names(missing)}")
    acked = offered & wanted
    changed = True
    while changed:
        changed = False
        for f, deps in DEPENDS.items():
            if has(acked, f) and not all(has(acked, d) for d in deps):
                acked &= ~f.bit
                changed = True
    return acked | (required & offered)
