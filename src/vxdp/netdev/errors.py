"""The one exception family of the netdev layer."""

from __future__ import annotations


class NetdevError(OSError):
    """A port or tap could not be opened or used; the message names the device, its netns and the step."""


def where(ifname: str, netns: str | None) -> str:
    return f"{ifname!r}" + (f" in netns {netns!r}" if netns else "")
