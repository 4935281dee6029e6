"""The offload protocol (docs/offload-protocol.md), one layer above `vxdp.virtio`'s ctrl framing.

Sans-IO from the wire up, named by role: `wire` (numbers, caps, errors, the bounded reader and
writer), `layout` (how a message declares its fields), `messages` (one dataclass per request and
reply), `codec` (ctrl frames <-> messages and replies); then the driver's end: `client` (commands as
Python calls over any transport), `remote` (the device's maps and an `Engine` that offloads), and
`device_record` (the device's table of its objects, OBJ_LIST). The device's end is `vxdp.host.offload`.
"""
